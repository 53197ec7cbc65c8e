"""Stored evidence: every figure the README and docs/ quote is generated from a committed run store.

A suite's runs are exported to ``docs/results/<suite>/runs.jsonl.gz`` (:func:`export_suite`: the
suite's metadata, then one JSON line per run with its config and results, each line carrying the
SHA-256 of its own content), small enough to commit and complete enough to rebuild the store
(:func:`import_suite`, which verifies every line's checksum). An export from a store where some
of the suite's runs are unfinished, or that lacks runs (a task, method and seed) the existing
export holds as done, does not replace that export unless ``allow_incomplete``. In Markdown, a region

    <!-- dipnet:begin table suite=comparison task=mnist1d-mlp -->
    ...generated...
    <!-- dipnet:end -->

is a *fragment*: :func:`render` regenerates it from the export. ``PYTHONPATH=src python
research/evidence.py check`` (``make docs-check``, run by ``make test``) fails on any
fragment whose text differs from what the committed exports give, and on a pre-registered study
whose suite file was not committed with its hypotheses before its export (:mod:`preregistration`);
``... write`` rewrites the fragments; ``... retrain`` (research/retrain.py, also run by ``make
test``) re-trains a sample of every export's runs with the current code and fails when a stored
metric differs.

Fragment kinds: ``table`` (a task's summary: mean ± 95% CI, paired comparison, Holm p over the
suite's comparisons with its baseline), ``sweep`` (every configuration of the swept methods,
validation and test), ``sigma`` (learned sigma per layer), ``measures`` (instrument results per
method, ``keys=a.b,c.d``, Holm over the fragment's cells), ``claims`` (prose generated from the
numbers, ``name=...``; see :data:`CLAIMS`), ``hypotheses`` (a suite's pre-registered hypotheses,
``suite=NAME``, Holm over exactly their declared family). Each table states its Holm family.
A fine-tuning suite's (``kind = "finetune"``) table says that its test accuracy is exact match.
A fragment with ``pending=WHY`` (e.g. ``pending=rerun``) stands for a suite whose export is not
committed yet: it holds one line saying so, and becomes an error once the export exists (remove
``pending=``).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from claims import CLAIMS
from measure_cells import measures_cells, pair_lines
from preregistration import preregistered
from dipnet.engine.checkpoint import atomic_write_bytes
from dipnet.engine.files import refuse_link
from dipnet.errors import ConfigError, DataError
from dipnet.experiments.hypotheses import hypotheses_markdown, suite_results
from dipnet.experiments.runspec import RunSpec
from dipnet.experiments.store import RunStore
from dipnet.experiments.suite_checks import load_toml
from dipnet.experiments.tables import TaskTable, format_markdown, sigma_cells, sweep_cells, task_tables

EXPORT_FORMAT = "dipnet-suite-export-1"
RESULTS = Path("docs") / "results"
_BEGIN = re.compile(r"<!-- dipnet:begin (\w+)((?: [\w.-]+=[^ ]*)*) -->")
_END = "<!-- dipnet:end -->"
STUDY = "pre-registration: "  # the lines of study_problems: nothing `write` can fix
FINETUNE_NOTE = ("test acc is exact match: the final answer of greedy decoding (deterministic prediction) scored "
                 "strictly against the oracle, on the test questions (dipnet.llm); test loss is the answer tokens' "
                 "loss; val acc, gap and train acc do not apply (n/a).")


def export_path(root: Path, suite: str) -> Path:
    return Path(root) / RESULTS / suite / "runs.jsonl.gz"


def _digest(record: dict[str, Any]) -> str:
    """SHA-256 of ``record``'s canonical JSON (its ``sha256`` field left out)."""
    text = json.dumps({k: v for k, v in record.items() if k != "sha256"}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _sealed(record: dict[str, Any]) -> str:
    """One export line: ``record`` and its checksum (``sha256``)."""
    return json.dumps({**record, "sha256": _digest(record)}, sort_keys=True, allow_nan=True)


def read_export(path: str | Path, verify: bool = True) -> list[dict[str, Any]]:
    """The lines of an export (header first), each checksum verified (unless not ``verify``); a
    damaged line is an error naming its run."""
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a readable suite export ({exc})") from None
    if not rows or not isinstance(rows[0], dict) or rows[0].get("format") != EXPORT_FORMAT:
        raise DataError(f"{path} is not a dipnet suite export (format {EXPORT_FORMAT})")
    for i, row in enumerate(rows if verify else []):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {i + 1} is not a JSON object; restore the file from git")
        if row.get("sha256") != _digest(row):
            what = "its header" if i == 0 else \
                f"run {row.get('key')} ({row.get('task')} / {row.get('method')} / seed {row.get('seed')})"
            why = "does not match its checksum (changed after export)" if "sha256" in row else "carries no checksum"
            raise DataError(f"{path}: {what} {why}; restore the file from git, or export the suite again from its store")
    return rows


def _incomplete(store: RunStore, suite: str, out: Path) -> str | None:
    """Why the store's runs of ``suite`` should not replace the export at ``out`` (None: they may)."""
    runs = store.runs(suite=suite)
    unfinished = [r for r in runs if r.status not in ("done", "failed")]
    if unfinished:
        return f"{len(unfinished)} of its {len(runs)} runs are not finished"
    if not out.exists():
        return None
    # by (task, method, seed), not key: a rerun after a default moved the keys replaces every run
    done = {(r.task, r.method, r.seed) for r in runs if r.status == "done"}
    try:
        before = read_export(out, verify=False)[1:]  # a damaged export may be replaced: that is its fix
    except DataError:
        return None
    lost = [row.get("key") for row in before if isinstance(row, dict) and row.get("status") == "done"
            and (row.get("task"), row.get("method"), row.get("seed")) not in done]
    return f"{len(lost)} run(s) done in {out} are missing or not done in it" if lost else None


def progress_path(root: Path, suite: str) -> Path:
    """Where a long suite's finished runs are committed while it is still running (``progress``)."""
    return root / "docs" / "results" / suite / "progress.jsonl.gz"


def export_suite(store_path: str | Path, suite: str, out: str | Path, *, allow_incomplete: bool = False,
                 done_only: bool = False) -> Path:
    """Write the suite's metadata and every run of it (done or failed; ``done_only``: done) as
    gzip'd JSON lines, each with its checksum. An existing export is replaced only by the suite's
    finished runs, all it held as done included, unless ``allow_incomplete``."""
    out = Path(out)
    with RunStore(store_path, create=False) as store:
        meta = store.get_meta(f"suite:{suite}")
        if meta is None:
            raise DataError(f"{store_path} holds no suite {suite!r}; suites there: {', '.join(store.suites()) or 'none'}")
        why = None if allow_incomplete else _incomplete(store, suite, out)
        if why and out.exists():
            raise ConfigError(f"{store_path} is incomplete for suite {suite!r} ({why}); it will not replace {out}: "
                              "finish the suite first, or pass --allow-incomplete")
        lines = [_sealed({"format": EXPORT_FORMAT, "suite": suite, "meta": meta})]
        for r in store.runs(suite=suite):
            if done_only and r.status != "done":
                continue
            lines.append(_sealed({"key": r.key, "status": r.status, "spec": r.spec.to_dict(), "task": r.task,
                                  "method": r.method, "seed": r.seed, "results": r.results, "error": r.error}))
    buf = io.BytesIO()
    # mtime 0: the same runs give the same bytes, so an unchanged export makes no diff
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write(("\n".join(lines) + "\n").encode())
    refuse_link(out, "choose another --root")
    atomic_write_bytes(out, buf.getvalue())
    return out


def import_suite(path: str | Path, store_path: str | Path) -> str:
    """Rebuild a suite's runs from an export (every line's checksum verified) into the store at
    ``store_path``; returns the suite name."""
    rows = read_export(path)
    suite, meta = rows[0]["suite"], rows[0]["meta"]
    with RunStore(store_path) as store:
        store.set_meta(f"suite:{suite}", meta)
        specs = []
        for row in rows[1:]:
            spec = RunSpec.from_dict({**row["spec"], "suite": suite, "task": row["task"], "method": row["method"]})
            specs.append(spec)
        store.set_suite(suite, specs)
        for spec, row in zip(specs, rows[1:]):
            store.claim(spec.key, "import")
            if row["status"] == "done":
                store.finish(spec.key, row["results"])
            else:
                store.fail(spec.key, row.get("error") or "failed", row.get("results"))
    return suite


# ---------------------------------------------------------------- fragments


@dataclass(frozen=True)
class Fragment:
    kind: str
    args: dict[str, str]
    start: int  # index of the first generated line
    end: int  # index of the end marker
    file: Path

    @property
    def where(self) -> str:
        return f"{self.file}:{self.start}"


def find_fragments(path: Path, lines: list[str]) -> list[Fragment]:
    out, open_ = [], None
    for i, line in enumerate(lines):
        m = _BEGIN.fullmatch(line.strip())
        if m:
            if open_ is not None:
                raise DataError(f"{path}:{i + 1}: a fragment begins inside another (missing {_END})")
            args = dict(a.split("=", 1) for a in m.group(2).split())
            open_ = (m.group(1), args, i + 1)
        elif line.strip() == _END:
            if open_ is None:
                raise DataError(f"{path}:{i + 1}: {_END} without a begin marker")
            out.append(Fragment(open_[0], open_[1], open_[2], i, path))
            open_ = None
    if open_ is not None:
        raise DataError(f"{path}: a fragment of kind {open_[0]!r} never ends ({_END})")
    return out


class Evidence:
    """The committed exports of a repository, imported on demand into temporary stores."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._dir = tempfile.TemporaryDirectory(prefix="dipnet-evidence-")
        self._tables: dict[str, list[TaskTable]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> "Evidence":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tables(self, suite: str) -> list[TaskTable]:
        if suite not in self._tables:
            export = export_path(self.root, suite)
            if not export.exists():
                raise DataError(f"no committed runs for suite {suite!r} ({export}); run the suite and export it")
            store = Path(self._dir.name) / f"{suite}.sqlite"
            import_suite(export, store)
            with RunStore(store, create=False) as s:
                self._tables[suite] = task_tables(s, suite)
                self._meta[suite] = s.get_meta(f"suite:{suite}", {}) or {}
        return self._tables[suite]

    def meta(self, suite: str) -> dict[str, Any]:
        """The suite's metadata as its export's header holds it."""
        self.tables(suite)
        return self._meta[suite]

    def kind(self, suite: str) -> str:
        """The suite's kind as its stored suite file declares it ("train" unless ``kind = ...``)."""
        text = self.meta(suite).get("text") or ""
        return str(load_toml(text, f"suite {suite!r}").get("kind", "train")) if text else "train"

    def exported(self, suite: str) -> bool:
        return export_path(self.root, suite).exists()

    def table(self, suite: str, task: str) -> TaskTable:
        for t in self.tables(suite):
            if t.task == task:
                return t
        raise DataError(f"suite {suite!r} has no task {task!r}; tasks: {', '.join(t.task for t in self.tables(suite))}")


def _markdown(cells: tuple[list[str], list[list[str]]] | None) -> list[str]:
    if cells is None:
        return ["(none)"]
    header, rows = cells
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def render(fragment: Fragment, evidence: Evidence) -> list[str]:
    """The lines a fragment must hold, from the committed exports."""
    a = fragment.args
    if fragment.kind == "claims":
        name = a.get("name", "")
        if name not in CLAIMS:
            raise DataError(f"{fragment.where}: unknown claims {name!r}; known: {', '.join(CLAIMS) or 'none'}")
        return CLAIMS[name](evidence)
    if "suite" not in a:
        raise DataError(f"{fragment.where}: a {fragment.kind} fragment needs suite=")
    if "pending" in a:
        if evidence.exported(a["suite"]):
            raise DataError(f"{fragment.where}: suite {a['suite']!r} is exported now; remove pending= from the marker "
                            "and run research/evidence.py write")
        return [f"*Pending ({a['pending']}): suite {a['suite']!r} has no committed export yet; this {fragment.kind} fragment is "
                "generated from it once it is exported (research/evidence.py export, then write).*"]
    if fragment.kind == "hypotheses":
        results = suite_results(evidence.tables(a["suite"]), evidence.meta(a["suite"]))
        if not results:
            raise DataError(f"{fragment.where}: suite {a['suite']!r} declares no [[hypotheses]] in its committed export")
        return hypotheses_markdown(results)
    if "task" not in a:
        raise DataError(f"{fragment.where}: a {fragment.kind} fragment needs suite= and task=")
    table = evidence.table(a["suite"], a["task"])
    if fragment.kind == "table":
        note = [FINETUNE_NOTE] if evidence.kind(a["suite"]) == "finetune" else []
        notes = [line for line in (table.resolution(), table.holm_note(), *note) if line]
        return [f"*{table.title}*", ""] + format_markdown(table) + [x for line in notes for x in ("", line)]
    if fragment.kind == "sweep":
        return _markdown(sweep_cells(table))
    if fragment.kind == "sigma":
        return _markdown(sigma_cells(table))
    if fragment.kind == "pairs":
        return pair_lines(table, [p.split(":") for p in a.get("pairs", "").split(",") if ":" in p],
                          a.get("key", "final.test_acc"), float(a.get("scale", 100)))
    if fragment.kind == "measures":
        keys = [k for k in a.get("keys", "").split(",") if k]
        if not keys:
            raise DataError(f"{fragment.where}: a measures fragment needs keys=a.b,c.d")
        labels = [label.replace("_", " ") for label in a.get("labels", "").split(",") if label] or None
        header, body, note = measures_cells(table, keys, float(a.get("scale", 1)), int(a.get("digits", 3)), labels)
        return _markdown((header, body)) + ["", note]
    raise DataError(f"{fragment.where}: unknown fragment kind {fragment.kind!r}; known: table, sweep, sigma, measures, "
                    "pairs, claims, hypotheses")


def documents(root: str | Path) -> list[Path]:
    root = Path(root)
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.exists()]


def study_problems(root: str | Path, notes: list[str] | None = None) -> list[str]:
    """One line per committed export that declares hypotheses its suite file did not hold in git
    history before the export's first commit (:mod:`preregistration`); what cannot be checked
    here goes to ``notes``."""
    problems = []
    for export in sorted((Path(root) / RESULTS).glob("*/runs.jsonl.gz")):
        problem, note = preregistered(root, export, read_export(export, verify=False)[0])
        problems += [f"{STUDY}{problem}"] if problem else []
        if note and notes is not None:
            notes.append(note)
    return problems


def check(root: str | Path, files: Iterable[Path] | None = None, write: bool = False,
          notes: list[str] | None = None) -> list[str]:
    """Regenerate every fragment; return one line per fragment that differs (rewriting it when
    ``write``) and per pre-registered study whose file was not committed before its runs."""
    problems = study_problems(root, notes)
    with Evidence(root) as evidence:
        for path in files or documents(root):
            lines = path.read_text(encoding="utf-8").split("\n")
            changed = False
            for frag in reversed(find_fragments(path, lines)):
                try:
                    want = render(frag, evidence)
                except DataError as exc:
                    problems.append(f"{frag.where}: {exc}")
                    continue
                if lines[frag.start:frag.end] != want:
                    problems.append(f"{frag.where}: {frag.kind} {' '.join(f'{k}={v}' for k, v in frag.args.items())} "
                                    "differs from the committed runs")
                    lines[frag.start:frag.end] = want
                    changed = True
            if write and changed:
                path.write_text("\n".join(lines), encoding="utf-8")
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["retrain"]:  # research/retrain.py: re-train a sample of every export's runs
        from retrain import main as retrain_main

        return retrain_main(argv[1:])

    p = argparse.ArgumentParser(prog="research/evidence.py",
                                description="Check (or rewrite) the figures README.md and docs/*.md quote against "
                                            "the committed suite exports in docs/results/.")
    p.add_argument("action", choices=("check", "write", "export", "progress", "resume", "retrain"),
                   help="progress: commit-able snapshot of a running suite's finished runs "
                        "(docs/results/SUITE/progress.jsonl.gz); resume: load that snapshot into --store, so "
                        "`dipnet compare` trains only the rest; retrain: see research/evidence.py retrain --help")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.add_argument("--store", help="export: the run store to export from")
    p.add_argument("--suite", help="export: the suite to export")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export: replace the committed export even from a store with unfinished or fewer runs")
    args = p.parse_args(argv)
    if args.action in ("progress", "resume"):
        if not (args.store and args.suite):
            p.error(f"{args.action} needs --store and --suite")
        path = progress_path(Path(args.root), args.suite)
        try:
            if args.action == "progress":
                print(export_suite(args.store, args.suite, path, allow_incomplete=True, done_only=True))
            else:
                import_suite(path, args.store)
                print(f"{args.store}: the finished runs of {path}")
        except (ConfigError, DataError, FileNotFoundError) as exc:
            print(f"{args.action}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.action == "export":
        if not (args.store and args.suite):
            p.error("export needs --store and --suite")
        try:
            print(export_suite(args.store, args.suite, export_path(Path(args.root), args.suite),
                               allow_incomplete=args.allow_incomplete))
        except (ConfigError, DataError) as exc:
            print(f"export: error: {exc}", file=sys.stderr)
            return 2
        return 0
    notes: list[str] = []
    try:
        problems = check(args.root, write=args.action == "write", notes=notes)
    except DataError as exc:
        print(f"docs-check: error: {exc}", file=sys.stderr)
        return 2
    for line in notes:
        print(f"docs-check: note: {line}", file=sys.stderr)
    for line in problems:
        print(("rewrote " if args.action == "write" and not line.startswith(STUDY) else "") + line, file=sys.stderr)
    n = sum(len(find_fragments(f, f.read_text(encoding="utf-8").split("\n"))) for f in documents(args.root))
    study = [line for line in problems if line.startswith(STUDY)]
    if args.action == "check":
        print(f"docs-check: {n} generated fragment(s), {len(problems) - len(study)} differing from the committed runs"
              + (f"; {len(study)} pre-registered study export(s) not preceded by their study file" if study else ""))
        return 1 if problems else 0
    return 1 if study else 0


if __name__ == "__main__":
    sys.exit(main())
