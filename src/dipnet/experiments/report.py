"""Reports from a run store: a Markdown file with PNG figures and one self-contained HTML file.

For a suite that declares hypotheses (``[[hypotheses]]``), first the pre-registered table: each
hypothesis per task with its difference, one-sided and TOST p-values Holm-adjusted over exactly the
declared family, and its resolution. For each suite and task: a table of mean ± 95% CI over seeds (test accuracy, test loss,
generalization gap, example-gradients relative to the baseline, wall time), the paired
comparison of every method with the baseline (difference, CI, paired t p-value and its Holm
adjustment, sign-flip p-value, effect size, verdict), and figures: accuracy per method with CIs, learning curves, accuracy per
training time, the learned DIPNet sigma per layer, and any instrument measures the runs carry
(curves such as accuracy vs corruption severity or attack eps; scalars such as the Jacobian
norm against the generalization gap). The environment and the exact suite text close it.
The HTML embeds its figures as base64 PNGs and links nothing outside itself.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from ..engine.files import check_output, refuse_link, write_output
from ..errors import ConfigError
from .figures import fig_accuracy, fig_accuracy_per_time, fig_learning_curves, fig_measures, fig_sigma
from .hypotheses import family_note, hypotheses_cells, hypotheses_markdown, suite_results
from .store import RunStore
from .tables import format_markdown, format_text_table, sigma_cells, sweep_cells, table_cells, task_tables

__all__ = ["ReportFiles", "STATISTICS_NOTE", "format_text_table", "task_tables", "write_report"]

STATISTICS_NOTE = (
    "Accuracy in %, differences in percentage points (pp); ± is the half-width of the 95% Student-t "
    "interval over seeds (standard deviations with ddof = 1). Test figures are reported for the settings "
    "as run (a swept method: the value chosen on validation); nothing is chosen on test. Comparisons with "
    "the baseline are paired by seed: paired t-test, its p-value Holm-adjusted over every comparison of "
    "the suite (the verdict uses it: better/worse when below 0.05), the exact sign-flip test, and the "
    "effect size d_z = mean / sd of the differences. A suite's pre-registered hypotheses are tested apart: "
    "one-sided in their declared direction and by TOST, Holm-adjusted over exactly their declared family."
)


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _environment(store: RunStore) -> list[tuple[str, str]]:
    done = store.runs(status="done")
    if not done:
        return []
    env = (done[-1].results or {}).get("env") or {}
    items = [("runs done / total", f"{len(done)} / {len(store.runs())}")]
    for key in ("python", "platform", "machine", "processor", "cpu_count", "torch_threads", "device", "gpu", "git_commit"):
        if env.get(key) is not None:
            items.append((key, str(env[key])))
    for pkg, ver in (env.get("versions") or {}).items():
        items.append((pkg, str(ver)))
    hosts = sorted({str(((r.results or {}).get("env") or {}).get("platform")) for r in done})
    if len(hosts) > 1:
        items.append(("platforms", "; ".join(hosts)))
    return items


_TITLE = "dipnet comparison report"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    return ("<div class='scroll'><table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table></div>")


def _is_report(path: Path, mark: str) -> bool:
    """Whether the file at ``path`` holds ``mark`` in its first kilobyte (dipnet's report title)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return mark in fh.read(1024)
    except OSError:
        return False


def _check_folder(out: Path) -> None:
    """Refuse a report folder that is a file, or a non-empty folder without dipnet's report, and
    a report file there that is a link or that dipnet did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} is a file; give a folder with -o")
    md, html_file, figs = out / "report.md", out / "report.html", out / "figures"
    for path in (md, html_file, figs):
        refuse_link(path, "choose another -o")
    if out.is_dir() and any(out.iterdir()) and not (md.is_file() and _is_report(md, f"# {_TITLE}")):
        raise ConfigError(f"report folder {out} exists and holds no dipnet report (report.md); dipnet will not write "
                          "into a folder it did not create (nor will --overwrite): choose another -o")
    check_output(html_file, _is_report(html_file, f"<title>{_TITLE}</title>"), "-o")
    if figs.exists() and not figs.is_dir():
        raise ConfigError(f"{figs} is not a folder; choose another -o")


def write_report(store_path: str | Path, out_dir: str | Path, *, suite: str | None = None) -> ReportFiles:
    """Write ``report.md`` (+ ``figures/*.png``) and a self-contained ``report.html`` into ``out_dir``:
    a new or empty folder, or one holding an earlier report (never through a link, never over a
    file dipnet did not write)."""
    out = Path(out_dir)
    _check_folder(out)
    with RunStore(store_path, create=False) as store:
        names = store.suites()
        if not names:
            raise ConfigError(f"{store_path} holds no runs yet; run `dipnet compare SUITE --store {store_path}` first")
        if suite is not None and suite not in names:
            raise ConfigError(f"{store_path} holds no suite {suite!r}; suites there: {', '.join(names)}")
        tables = task_tables(store, suite)
        env = _environment(store)
        failed = store.runs(status="failed")
        pending = [r for r in store.runs() if r.status in ("pending", "running")]
        suites = {name: store.get_meta(f"suite:{name}", {}) or {} for name in ([suite] if suite else store.suites())}
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    md: list[str] = [f"# {_TITLE}", ""]
    body: list[str] = []
    figures: list[Path] = []
    intro = (f"Store: `{Path(store_path).name}`. {STATISTICS_NOTE}")
    md.append(intro)
    body.append(f"<p>{html.escape(intro)}</p>")
    if pending:
        note = f"{len(pending)} run(s) not finished yet (pending or interrupted): the numbers below leave them out."
        md += ["", f"**{note}**"]
        body.append(f"<p class='warn'>{html.escape(note)}</p>")
    for name, meta in suites.items():
        results = suite_results([t for t in tables if t.suite == name], meta)
        if not results:
            continue
        title = f"Pre-registered hypotheses: {name}"
        md += ["", f"## {title}", ""] + hypotheses_markdown(results)
        body.append(f"<h2>{html.escape(title)}</h2>" + _html_table(*hypotheses_cells(results))
                    + f"<p class='note'>{html.escape(family_note(results))}</p>")
    for table in tables:
        title = table.title
        md += ["", f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        md += format_markdown(table)
        body.append(_html_table(*table_cells(table)))
        for caption, cells in (
                ("Every configuration of the swept methods (mean ± 95% CI over seeds); the row above is the one "
                 "with the best validation accuracy:", sweep_cells(table)),
                ("Learned noise std per layer at the end of training, in the units of the layer's input (relative "
                 "scale: sigma times the input's running RMS), mean ± 95% CI over seeds:", sigma_cells(table))):
            if cells is None:
                continue
            md += ["", caption, "", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
            md += ["| " + " | ".join(r) + " |" for r in cells[1]]
            body.append(f"<p>{html.escape(caption)}</p>" + _html_table(*cells))
        for note in (table.resolution(), table.holm_note()):
            if note:
                md += ["", note]
                body.append(f"<p class='note'>{html.escape(note)}</p>")
        plots = [("test accuracy", fig_accuracy(table)), ("learning curves", fig_learning_curves(table)),
                 ("accuracy per training cost", fig_accuracy_per_time(table)), ("learned sigma", fig_sigma(table))]
        plots += fig_measures(table)
        for name, png in plots:
            if png is None:
                continue
            path = fig_dir / f"{_slug(table.suite)}__{_slug(table.task)}__{_slug(name)}.png"
            write_output(path, png)
            figures.append(path)
            md += ["", f"![{table.task}: {name}](figures/{path.name})"]
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f"<figure><img alt='{html.escape(table.task + ': ' + name)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{html.escape(table.task + ': ' + name)}</figcaption></figure>")
    if failed:
        md += ["", "## Failed runs", ""]
        body.append("<h2>Failed runs</h2><ul>")
        for r in failed:
            line = f"{r.suite} / {r.task} / {r.method} / seed {r.seed}: {r.error}"
            md.append(f"- {line}")
            body.append(f"<li>{html.escape(line)}</li>")
        body.append("</ul>")
    if env:
        md += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env]
        body.append("<h2>Environment</h2><table><tbody>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in env) + "</tbody></table>")
    for name, meta in suites.items():
        text = meta.get("text")
        if not text:
            continue
        md += ["", f"## Suite `{name}` ({meta.get('source', '')})", "", "```toml", text.strip(), "```"]
        body.append(f"<h2>Suite {html.escape(name)} <small>{html.escape(str(meta.get('source', '')))}</small></h2>"
                    f"<pre>{html.escape(text.strip())}</pre>")

    md_path, html_path = out / "report.md", out / "report.html"
    write_output(md_path, ("\n".join(md) + "\n").encode("utf-8"))
    write_output(html_path, _HTML.format(title=_TITLE, body="\n".join(body)).encode("utf-8"))
    return ReportFiles(md_path, html_path, figures)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; max-width: 100%; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.warn {{ color: #a40; font-weight: bold; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""
