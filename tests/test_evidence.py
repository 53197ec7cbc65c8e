"""Stored evidence: the figures README.md and docs/ quote are regenerated from the committed suite
exports, and an edited export is caught."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dipnet.experiments import RunStore, parse_suite, run_suite

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "research"))  # the evidence script lives outside the package

from evidence import check, export_suite, find_fragments, import_suite  # noqa: E402


def _fake(config: dict, run_dir: str) -> dict:
    acc = 0.5 + 0.01 * config["seed"] + (0.05 if config["method"] == "input-noise" else 0.0)
    return {"final": {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "train_acc": 0.9, "train_loss": 0.1,
                      "gap": 0.4, "example_grads": 1, "wall_s": 0.0}, "history": []}


SUITE = """
name = "ev"
seeds = [0, 1, 2]
[tasks.t]
data = "synthetic"
model = "mlp"
[methods.erm]
[methods.input-noise]
"""


def test_export_import_round_trip_and_fragment_check(tmp_path):
    store = tmp_path / "a.sqlite"
    run_suite(parse_suite(SUITE, "ev.toml"), store, train_fn=_fake)
    root = tmp_path / "repo"
    export = export_suite(store, "ev", root / "docs" / "results" / "ev" / "runs.jsonl.gz")
    assert export_suite(store, "ev", tmp_path / "again.jsonl.gz").read_bytes() == export.read_bytes()  # stable bytes
    import_suite(export, tmp_path / "b.sqlite")
    with RunStore(store) as a, RunStore(tmp_path / "b.sqlite") as b:
        assert [(r.task, r.method, r.seed, r.final) for r in a.runs(suite="ev")] == \
               [(r.task, r.method, r.seed, r.final) for r in b.runs(suite="ev")]
    doc = root / "docs" / "x.md"
    doc.write_text("intro\n<!-- dipnet:begin table suite=ev task=t -->\nstale\n<!-- dipnet:end -->\nend\n")
    assert check(root) and check(root, write=True)
    text = doc.read_text()
    assert "| input-noise |" in text and "+5.00 [" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert check(root) == []


def _edit_one_value(export: Path) -> None:
    lines = gzip.open(export, "rt").read().splitlines()
    for i, line in enumerate(lines[1:], 1):
        row = json.loads(line)
        if row["status"] == "done":
            row["results"]["final"]["test_acc"] += 0.1
            lines[i] = json.dumps(row, sort_keys=True)
            break
    with gzip.open(export, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_docs_check_passes_on_the_repository_and_fails_on_an_edited_store(tmp_path):
    fragments = [f for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
                 for f in find_fragments(doc, doc.read_text().split("\n"))]
    if not fragments:
        pytest.skip("no generated fragments in the docs yet")
    assert check(ROOT) == []
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    suite = next(f.args["suite"] for f in fragments if f.kind == "table" and "pending" not in f.args)
    _edit_one_value(copy / "docs" / "results" / suite / "runs.jsonl.gz")
    assert any(suite in line or "differs" in line for line in check(copy))


# ---------------------------------------------------------------- pre-registered studies

STUDY = SUITE.replace('name = "ev"', 'name = "study"') + """[methods.dipnet]
[[hypotheses]]
a = "input-noise"
b = "erm"
direction = "greater"
margin = 1.0
[[hypotheses]]
a = "dipnet"
b = "erm"
direction = "two-sided"
"""


def _noisy(config: dict, run_dir: str) -> dict:
    seed, method = config["seed"], config["method"]
    acc = 0.5 + 0.01 * seed + {"input-noise": 0.03 + 0.004 * (seed % 2), "dipnet": 0.002 * (seed - 1)}.get(method, 0.0)
    return {"final": {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "train_acc": 0.9, "gap": 0.4,
                      "example_grads": 1, "wall_s": 0.0}, "history": []}


def _study_export(tmp_path: Path, root: Path, text: str = STUDY) -> Path:
    store = tmp_path / "study.sqlite"
    run_suite(parse_suite(text, "suites/study.toml"), store, train_fn=_noisy)
    return export_suite(store, "study", root / "docs" / "results" / "study" / "runs.jsonl.gz")


def test_the_hypotheses_fragment_renders_from_a_synthetic_export(tmp_path):
    from scipy import stats as sps

    root = tmp_path / "repo"
    _study_export(tmp_path, root)
    doc = root / "docs" / "study.md"
    doc.write_text("<!-- dipnet:begin hypotheses suite=study -->\n<!-- dipnet:end -->\n")
    assert check(root, write=True) and check(root) == []
    lines = doc.read_text().split("\n")
    rows = [line.split(" | ") for line in lines if line.startswith("| input-noise") or line.startswith("| dipnet")]
    seeds = range(3)
    acc = {m: [100 * _noisy({"seed": s, "method": m}, "")["final"]["test_acc"] for s in seeds]
           for m in ("erm", "input-noise", "dipnet")}
    p = [sps.ttest_rel(acc["input-noise"], acc["erm"], alternative="greater").pvalue,
         sps.ttest_rel(acc["dipnet"], acc["erm"]).pvalue]
    d = [a - b for a, b in zip(acc["input-noise"], acc["erm"])]
    tost = max(sps.ttest_1samp(d, -1.0, alternative="greater").pvalue, sps.ttest_1samp(d, 1.0, alternative="less").pvalue)
    holm = sorted(p)[0] * 2, max(sorted(p)[0] * 2, min(1.0, sorted(p)[1]))  # two tests, by hand
    want_holm = [holm[0], holm[1]] if p[0] < p[1] else [holm[1], holm[0]]
    assert [r[0] for r in rows] == ["| input-noise > erm", "| dipnet ≠ erm"]
    assert [r[6] for r in rows] == [f"{x:.3f}" if x >= 0.001 else "< 0.001" for x in p]
    assert [r[7] for r in rows] == [f"{min(1.0, x):.3f}" if x >= 0.001 else "< 0.001" for x in want_holm]
    assert rows[0][9] == f"{tost:.3f}" and rows[1][9] == "n/a"
    assert any(line.startswith("Family: the 2 declared hypotheses over their tasks, 2 tests") for line in lines)
    # an export written before suites declared hypotheses still reads, and says it has none
    store = tmp_path / "old.sqlite"
    run_suite(parse_suite(SUITE, "ev.toml"), store, train_fn=_fake)
    export_suite(store, "ev", root / "docs" / "results" / "ev" / "runs.jsonl.gz")
    doc.write_text("<!-- dipnet:begin hypotheses suite=ev -->\n<!-- dipnet:end -->\n")
    assert any("declares no [[hypotheses]]" in line for line in check(root))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def _commit(root: Path, *paths: str) -> None:
    _git(root, "add", *paths)
    _git(root, "commit", "-q", "-m", "step")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("order, problem", [
    ("study, then runs", None),
    ("study and runs together", "was not committed before its first commit"),
    ("hypotheses added with the runs", "its hypotheses differ from those suites/study.toml held"),
    ("hypotheses changed after the runs", "its hypotheses differ from those suites/study.toml held"),
    ("runs not committed yet", None),
    ("nothing committed", "was not committed at HEAD"),
])
def test_a_study_file_is_committed_before_its_runs(tmp_path, order, problem):
    from evidence import study_problems

    root = tmp_path / "repo"
    (root / "suites").mkdir(parents=True)
    _git(root, "init", "-q")
    (root / "README.md").write_text("x\n")
    _commit(root, "README.md")
    suite_file = root / "suites" / "study.toml"
    plain = STUDY[:STUDY.index("[[hypotheses]]")]
    suite_file.write_text(plain if order == "hypotheses added with the runs" else STUDY)
    if order in ("study, then runs", "hypotheses added with the runs", "hypotheses changed after the runs",
                 "runs not committed yet"):
        _commit(root, "suites")
    suite_file.write_text(STUDY)
    export = _study_export(tmp_path, root)
    if order != "runs not committed yet" and order != "nothing committed":
        _commit(root, "suites", "docs")
    if order == "hypotheses changed after the runs":  # the study edited, run again (nothing to train) and re-exported
        changed = STUDY.replace('direction = "two-sided"', 'direction = "greater"')
        suite_file.write_text(changed)
        export = _study_export(tmp_path, root, changed)
        _commit(root, "suites", "docs")
    notes: list[str] = []
    found = study_problems(root, notes)
    assert notes == []
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0] and str(export.relative_to(root)) in found[0], found
        assert any(problem in line for line in check(root))  # the docs check fails on it


def test_outside_a_git_checkout_the_study_check_says_it_could_not_run(tmp_path):
    from evidence import study_problems

    root = tmp_path / "copy"
    (root / "suites").mkdir(parents=True)
    (root / "suites" / "study.toml").write_text(STUDY)
    _study_export(tmp_path, root)
    notes: list[str] = []
    assert study_problems(root, notes) == [] and len(notes) == 1
    assert "not checked that its hypotheses were committed before its runs" in notes[0]


def test_the_library_defaults_are_the_candidate_the_committed_defaults_study_chose():
    """suites/dipnet-defaults.toml's rule (largest mean paired validation gain over ERM across its
    tasks), recomputed here from the raw export records, picks the candidate whose settings are
    DIPNet's defaults: the docs' "chosen" and the code cannot drift apart."""
    from evidence import read_export
    from dipnet.methods import build_method

    path = ROOT / "docs" / "results" / "dipnet-defaults" / "runs.jsonl.gz"
    if not path.exists():
        pytest.skip("no committed dipnet-defaults export")
    runs = [r for r in read_export(path)[1:] if r["status"] == "done"]
    val = {(r["task"], r["method"], r["seed"]): r["results"]["final"]["val_acc"] for r in runs}
    tasks = sorted({t for t, _, _ in val})
    gains: dict[str, list[float]] = {}
    for (task, method, seed), v in val.items():
        if method != "erm":
            gains.setdefault(method, [0.0] * len(tasks))
    for method in gains:
        for i, task in enumerate(tasks):
            diffs = [v - val[(task, "erm", s)] for (t, m, s), v in val.items() if t == task and m == method]
            gains[method][i] = sum(diffs) / len(diffs)
    best = max(gains, key=lambda m: sum(gains[m]))
    chosen = next(r["spec"]["resolved"]["dipnet"] for r in runs if r["method"] == best)
    default = build_method("dipnet").components[0]
    assert {k: getattr(default, k) for k in ("scale", "sigma", "alpha", "beta")} == \
        {k: chosen[k] for k in ("scale", "sigma", "alpha", "beta")}


def test_a_long_suites_progress_snapshot_resumes_into_a_fresh_store(tmp_path):
    """`progress` writes only the finished runs of a store where others are still pending;
    `resume` loads them into a fresh store, and run_suite there trains exactly the rest."""
    from evidence import main as evidence_main

    store = tmp_path / "a.sqlite"
    stop_after = {"n": 0}

    def flaky(config: dict, run_dir: str) -> dict:
        stop_after["n"] += 1
        if stop_after["n"] > 4:
            raise KeyboardInterrupt  # the session ends: the other runs stay unfinished
        return _fake(config, run_dir)

    with pytest.raises(KeyboardInterrupt):
        run_suite(parse_suite(SUITE, "ev.toml"), store, train_fn=flaky)
    root = tmp_path / "repo"
    assert evidence_main(["progress", "--root", str(root), "--store", str(store), "--suite", "ev"]) == 0
    snapshot = root / "docs" / "results" / "ev" / "progress.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(snapshot, "rt").read().splitlines()[1:]]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    fresh = tmp_path / "b.sqlite"
    assert evidence_main(["resume", "--root", str(root), "--store", str(fresh), "--suite", "ev"]) == 0
    trained: list[tuple] = []

    def counting(config: dict, run_dir: str) -> dict:
        trained.append((config["method"], config["seed"]))
        return _fake(config, run_dir)

    run_suite(parse_suite(SUITE, "ev.toml"), fresh, train_fn=counting)
    assert len(trained) == 2  # 6 runs, 4 kept from the snapshot
    with RunStore(fresh) as b:
        assert {r.status for r in b.runs(suite="ev")} == {"done"} and len(b.runs(suite="ev")) == 6
