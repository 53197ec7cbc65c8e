"""The report as a reader sees it (issue 18): figures whose labels and legends do not collide,
integer epoch ticks, equal-cost methods told apart, and the HTML rendered by headless Chromium
(when installed) with every figure loaded and nothing wider than the window."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import matplotlib
import pytest

matplotlib.use("Agg", force=True)

from dipnet.experiments import RunStore, parse_suite, run_suite, write_report  # noqa: E402
from dipnet.experiments import figures  # noqa: E402
from dipnet.experiments.tables import task_tables  # noqa: E402

SUITE = """
name = "render"
seeds = [0, 1, 2]
[tasks.t]
data = "synthetic"
model = "mlp"
[methods.erm]
[methods.dipnet]
[methods.input-noise]
"""


def _fake(config: dict, run_dir: str) -> dict:
    seed, method = config["seed"], config["method"]
    acc = 0.6 + 0.01 * seed + {"dipnet": 0.03, "input-noise": 0.01}.get(method, 0.0)
    history = [{"epoch": e, "test_acc": acc * (e + 1) / 3, "train_loss": 1.0 / (e + 1),
                "method": {"sigma": {"linear1": 0.2, "linear2": 0.3}} if method == "dipnet" else {}} for e in range(3)]
    return {"final": {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "train_acc": 0.9, "train_loss": 0.1,
                      "gap": 0.3, "example_grads": 1000, "wall_s": 1.0 + seed}, "history": history}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    run_suite(parse_suite(SUITE, "render.toml"), root / "s.sqlite", train_fn=_fake)
    return root, write_report(root / "s.sqlite", root / "rep")


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _captured(fn, table):
    """The matplotlib figure a figure function draws, before it is turned into PNG bytes."""
    held = {}
    real = figures._png

    def keep(fig):
        held["fig"] = fig
        fig.canvas.draw()
        return b"png"

    figures._png = keep
    try:
        fn(table)
    finally:
        figures._png = real
    return held["fig"]


def test_labels_legends_and_ticks_do_not_collide(report):
    root, _ = report
    with RunStore(root / "s.sqlite") as store:
        (table,) = task_tables(store, "render")
    for fn in (figures.fig_learning_curves, figures.fig_accuracy_per_time, figures.fig_sigma):
        fig = _captured(fn, table)
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        for i, ax in enumerate(axes):
            label = ax.yaxis.label.get_window_extent(renderer)
            for j, other in enumerate(axes):
                if i != j:
                    assert not _overlap(label, other.get_window_extent(renderer)), (fn.__name__, "y-label on a panel")
            for legend in fig.legends + ([ax.get_legend()] if ax.get_legend() else []):
                assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)), \
                    (fn.__name__, "legend covers the plot")
        if fn is figures.fig_learning_curves:
            for ax in axes:
                assert all(float(t).is_integer() for t in ax.get_xticks()), "fractional epoch ticks"
        if fn is figures.fig_accuracy_per_time:
            xs = [c.lines[0].get_xdata()[0] for c in axes[1].containers]
            assert len(xs) == 3 and len(set(xs)) == len(xs), "equal-cost methods drawn on one x value"


def test_headings_name_dataset_model_and_recipe(report):
    _, files = report
    text = files.markdown.read_text()
    assert "## render / t (synthetic, mlp; adamw lr 0.001 cosine, batch 128, 10 epochs)" in text


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="headless Chromium is not installed")
def test_html_report_renders_in_headless_chromium(report, tmp_path):
    _, files = report
    probe = tmp_path / "probe.html"
    html = files.html.read_text()
    script = ("<script>window.addEventListener('load', () => { document.title = JSON.stringify({"
              "scroll: document.documentElement.scrollWidth, width: window.innerWidth, "
              "images: [...document.images].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().right])"
              "}); });</script>")
    probe.write_text(html.replace("</body>", script + "</body>"))
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", out.stdout, re.S)
    assert title, out.stderr[-500:]
    state = json.loads(title.group(1).replace("&quot;", '"'))
    assert state["images"] and all(done and natural > 0 for done, natural, _ in state["images"])
    assert state["scroll"] <= state["width"], "the page is wider than the window"
    assert all(right <= state["width"] for _, _, right in state["images"])
