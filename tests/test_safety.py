"""Hardening, second round (issue 26): nothing written through a link or over a file dipnet did not
write (checked against the bytes of decoy files), nothing foreign modified (someone else's SQLite
file byte for byte), stored results checksummed (a flipped digit is named, never reported), a
finished run over damaged weights refused, and the report's figures and headers fixed."""
from __future__ import annotations

import gzip
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from dipnet.errors import ConfigError, DataError
from dipnet.experiments import RunStore, parse_suite, run_suite
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))  # the evidence script lives outside the package
from evidence import export_suite, import_suite, main as evidence_main  # noqa: E402

from clirun import cli, run_cli

FAST = ["--data", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--progress", "none",
        "--threads", "1"]
DECOY = b"someone else's file\n"
SUITE = 'name = "s"\nseeds = [0, 1]\n[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n[methods.erm]\n[methods.input-noise]\n'


def one_line(code: int, err: str, needle: str) -> None:
    assert code == 2 and needle in err and len(err.splitlines()) == 1, (code, err)


def decoy(tmp_path: Path, name: str = "decoy.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(DECOY)
    return path


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target's name), for before/after comparisons."""
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from dipnet.cli import main

    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    return run


def _fake(config: dict, run_dir: str) -> dict:
    acc = 0.5 + 0.01 * config["seed"] + (0.05 if config["method"] == "input-noise" else 0.0)
    return {"final": {"test_acc": acc, "val_acc": acc, "gap": 0.1}, "history": []}


def _store(path: Path, text: str = SUITE) -> Path:
    run_suite(parse_suite(text, "s.toml"), path, train_fn=_fake)
    return path


# ---------------------------------------------------------------- 1. no write through a link


@pytest.mark.parametrize("name", [".dipnet.lock", "run.json", "checkpoint.safetensors"])
@pytest.mark.parametrize("fresh", [True, False])
def test_a_run_file_that_is_a_link_is_refused_and_its_target_kept(capsys, tmp_path, fresh, name):
    run, target = tmp_path / "run", decoy(tmp_path)
    if not fresh:
        assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
        (run / name).unlink(missing_ok=True)
    run.mkdir(exist_ok=True)
    (run / name).symlink_to(target)
    one_line(*cli(capsys, "train", *FAST, "--epochs", "3", "--out", str(run)), "symbolic link")
    assert target.read_bytes() == DECOY and (run / name).is_symlink()


def test_lock_file_is_removed_when_the_run_ends(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    assert not (run / ".dipnet.lock").exists()
    code, _ = cli(capsys, "train", *FAST, "--lr", "1e6", "--epochs", "30", "--out", str(tmp_path / "div"))
    assert code == 1 and not (tmp_path / "div" / ".dipnet.lock").exists()  # a failed run too


def test_measure_refuses_to_overwrite_a_users_file(capsys, tmp_path, trained):
    notes = decoy(tmp_path, "notes.txt")
    one_line(*cli(capsys, "measure", str(trained), "--what", "jacobian", "--n", "20", "--out", str(notes)),
             "dipnet did not write it")
    assert notes.read_bytes() == DECOY
    out = tmp_path / "m" / "measures.json"  # a new file outside the run, then dipnet's own file again
    for _ in range(2):
        assert cli(capsys, "measure", str(trained), "--what", "jacobian", "--n", "20", "--out", str(out))[0] == 0
    assert json.loads(out.read_text())["format"] == "dipnet-measures-1"


def test_robust_refuses_a_link_and_a_foreign_plot_beside_its_json(capsys, tmp_path, trained):
    target = decoy(tmp_path)
    (tmp_path / "link.json").symlink_to(target)
    args = ["robust", str(trained), "--attacks", "fgsm", "--corruptions", "none", "--no-shift", "--n", "20"]
    one_line(*cli(capsys, *args, "--out", str(tmp_path / "link.json")), "symbolic link")
    assert target.read_bytes() == DECOY
    folder = tmp_path / "o"
    assert cli(capsys, *args, "--out", str(folder / "r.json"))[0] == 0
    assert cli(capsys, *args, "--out", str(folder / "r.json"))[0] == 0  # its own plot, named by its own JSON
    other = decoy(tmp_path / "o", "robust_eps.png")
    one_line(*cli(capsys, *args, "--out", str(folder / "other.json")), "dipnet did not write it")
    assert other.read_bytes() == DECOY and not (folder / "other.json").exists()


def test_report_refuses_a_folder_it_did_not_create_and_links_in_its_own(capsys, tmp_path):
    store = _store(tmp_path / "s.sqlite")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_bytes(DECOY)
    before = files(mine)
    one_line(*cli(capsys, "report", str(store), "-o", str(mine)), "holds no dipnet report")
    assert files(mine) == before
    ours = tmp_path / "ours"
    ours.mkdir()  # an empty folder is fine, and so is writing the report again
    for _ in range(2):
        assert cli(capsys, "report", str(store), "-o", str(ours))[0] == 0
    (ours / "report.html").unlink()
    target = decoy(tmp_path)
    (ours / "report.html").symlink_to(target)
    one_line(*cli(capsys, "report", str(store), "-o", str(ours)), "symbolic link")
    assert target.read_bytes() == DECOY


# ---------------------------------------------------------------- 2. nothing foreign modified


def test_someone_elses_sqlite_file_is_refused_byte_for_byte(capsys, tmp_path):
    foreign = tmp_path / "theirs.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = foreign.read_bytes()
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    for argv in (["report", str(foreign), "-o", str(tmp_path / "r")],
                 ["compare", str(suite), "--store", str(foreign), "--threads", "1"]):
        one_line(*cli(capsys, *argv), "dipnet did not write")
        assert foreign.read_bytes() == before and before[18:20] == b"\x01\x01"  # journal mode: still not WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml", "theirs.db"]


def test_an_empty_file_is_never_turned_into_a_store(capsys, tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    for argv in (["report", str(empty)], ["compare", str(suite), "--store", str(empty), "--threads", "1"]):
        one_line(*cli(capsys, *argv), "empty file")
        assert empty.stat().st_size == 0


def test_a_read_only_store_is_read_and_a_write_to_it_named_read_only(tmp_path):
    store = _store(tmp_path / "s.sqlite")
    with RunStore(store, create=False) as ro:  # readers never write
        assert len(ro.runs()) == 4
        with pytest.raises(DataError, match="is read-only"):
            ro.set_meta("x", 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_store_without_write_permission_is_named_read_only(tmp_path):
    store = _store(tmp_path / "s.sqlite")
    for p in tmp_path.iterdir():
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only"):
            RunStore(store).set_meta("x", 1)
    finally:
        tmp_path.chmod(0o755)


def test_damaged_run_json_and_a_fine_tuning_run_are_named(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    (run / "run.json").write_text('{"status": "done", "config": {')
    one_line(*cli(capsys, "train", *FAST, "--out", str(run)), "run.json is damaged")
    ft = tmp_path / "ft"
    ft.mkdir()
    from dipnet.llm.config import FinetuneConfig

    (ft / "run.json").write_text(json.dumps({"format": "dipnet-run-1", "status": "done",
                                             "config": FinetuneConfig(task="chain_sum").to_dict()}))
    for command in ("eval", "measure", "robust"):
        one_line(*cli(capsys, command, str(ft)), "is a fine-tuning run (task chain_sum")


# ---------------------------------------------------------------- 3. stored results checksummed


def _flip_digit(store: Path) -> str:
    """Change one digit of a stored test_acc outside dipnet; returns the run's key."""
    with sqlite3.connect(store) as conn:
        key, results = conn.execute("SELECT key, results FROM runs WHERE status='done' ORDER BY rowid").fetchone()
        edited = results.replace('"test_acc": 0.5', '"test_acc": 0.9', 1)
        assert edited != results
        conn.execute("UPDATE runs SET results=? WHERE key=?", (edited, key))
    conn.close()
    return key


def test_a_flipped_digit_in_the_store_names_the_run_and_stops(capsys, tmp_path):
    store = _store(tmp_path / "s.sqlite")
    key = _flip_digit(store)
    code, err = cli(capsys, "report", str(store), "-o", str(tmp_path / "r"))
    one_line(code, err, f"run {key}")
    assert "checksum" in err and not (tmp_path / "r").exists()
    with pytest.raises(DataError, match=key):
        export_suite(store, "s", tmp_path / "e.jsonl.gz")


def test_a_store_from_before_checksums_is_sealed_on_first_use(tmp_path):
    store = _store(tmp_path / "s.sqlite")
    with sqlite3.connect(store) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN checksum")
    conn.close()
    with RunStore(store, create=False) as s:
        assert sorted(r.final["test_acc"] for r in s.runs()) == [0.5, 0.51, 0.55, 0.56]
    key = _flip_digit(store)
    with pytest.raises(DataError, match=key):
        RunStore(store).runs()


def _edit_export(path: Path) -> None:
    lines = gzip.open(path, "rt").read().splitlines()
    row = json.loads(lines[1])
    row["results"]["final"]["test_acc"] = 0.9
    lines[1] = json.dumps(row, sort_keys=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_an_edited_export_line_names_its_run(tmp_path):
    export = export_suite(_store(tmp_path / "s.sqlite"), "s", tmp_path / "e.jsonl.gz")
    key = json.loads(gzip.open(export, "rt").read().splitlines()[1])["key"]
    _edit_export(export)
    with pytest.raises(DataError, match=f"run {key}.*checksum"):
        import_suite(export, tmp_path / "b.sqlite")


def test_an_incomplete_store_does_not_replace_an_export(capsys, tmp_path):
    root = tmp_path / "repo"
    export = root / "docs" / "results" / "s" / "runs.jsonl.gz"
    full = _store(tmp_path / "full.sqlite")
    assert evidence_main(["export", "--root", str(root), "--store", str(full), "--suite", "s"]) == 0
    before = export.read_bytes()
    partial = _store(tmp_path / "partial.sqlite", SUITE.replace("seeds = [0, 1]", "seeds = [0]"))
    pending = tmp_path / "pending.sqlite"
    with RunStore(pending) as s:
        s.set_meta("suite:s", {})
        s.set_suite("s", parse_suite(SUITE, "s.toml").expand())
    for store in (partial, pending):
        argv = ["export", "--root", str(root), "--store", str(store), "--suite", "s"]
        assert evidence_main(argv) == 2 and "--allow-incomplete" in capsys.readouterr().err
        assert export.read_bytes() == before
    assert evidence_main(argv + ["--allow-incomplete"]) == 0 and export.read_bytes() != before
    moved = _store(tmp_path / "moved.sqlite", SUITE + "[train]\nlr = 0.5\n")  # every run again, under new keys
    assert evidence_main(["export", "--root", str(root), "--store", str(moved), "--suite", "s"]) == 0


# ---------------------------------------------------------------- 4. finished runs over damaged weights


def _flip_weight(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 41] ^= 1
    path.write_bytes(bytes(raw))
    return bytes(raw)


def test_rerunning_a_finished_run_over_corrupted_weights_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    damaged = _flip_weight(run / "model.safetensors")
    one_line(*cli(capsys, "train", *FAST, "--out", str(run)), "--overwrite")
    assert (run / "model.safetensors").read_bytes() == damaged
    assert cli(capsys, "train", *FAST, "--out", str(run), "--overwrite")[0] == 0
    assert cli(capsys, "eval", str(run))[0] == 0


def test_rerunning_a_finished_finetune_over_corrupted_adapters_is_refused(capsys, tmp_path):
    for module in ("transformers", "peft", "reasoning_gym"):
        pytest.importorskip(module)
    args = ["finetune", "--model", "tiny-llama", "--task", "chain_sum", "--steps", "2", "--train-size", "8",
            "--val-size", "2", "--test-size", "2", "--batch-size", "4", "--progress", "none", "--out", str(tmp_path / "ft")]
    assert cli(capsys, *args)[0] == 0
    adapters = next(p for p in (tmp_path / "ft").glob("*.safetensors") if p.name != "checkpoint.safetensors")
    damaged = _flip_weight(adapters)
    one_line(*cli(capsys, *args), "checksum")
    assert adapters.read_bytes() == damaged
    one_line(*cli(capsys, "eval", str(tmp_path / "ft")), "fine-tuning run")


# ---------------------------------------------------------------- 5. report and measure output


def test_example_gradient_tick_labels_do_not_overlap(monkeypatch):
    from dipnet.experiments import figures
    from evidence import Evidence

    drawn = []
    monkeypatch.setattr(figures, "_png", lambda fig: drawn.append(fig) or b"")
    with Evidence(Path(__file__).resolve().parents[1]) as ev:
        for table in ev.tables("default"):
            figures.fig_accuracy_per_time(table)
    assert drawn
    for fig in drawn:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            lo, hi = sorted(ax.get_xlim())
            boxes = sorted((t.get_window_extent(renderer) for t, x in zip(ax.get_xticklabels(), ax.get_xticks())
                            if t.get_text() and lo <= x <= hi), key=lambda b: b.x0)
            assert len(boxes) >= 2 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_a_fine_tuning_suites_header_names_its_setting():
    from types import SimpleNamespace

    from dipnet.experiments.tables import describe_setting
    from dipnet.llm.config import FinetuneConfig

    config = FinetuneConfig(task="chain_sum", lr=1e-3, steps=40).to_dict()
    text = describe_setting([SimpleNamespace(spec=SimpleNamespace(config=config))])
    assert "None" not in text and text.startswith("chain_sum, smollm2-135m; adamw lr 0.001") and "40 steps" in text


def test_measure_prints_the_smoothed_nets_figures(capsys, tmp_path):
    run = tmp_path / "dip"
    assert cli(capsys, "train", *FAST, "--method", "dipnet", "--out", str(run))[0] == 0
    code, out, _ = run_cli(capsys, "measure", str(run), "--what", "jacobian,curvature", "--n", "20", "--smoothed", "4")
    saved = json.loads((run / "measures.json").read_text())
    assert code == 0
    assert f"smoothed net (4 samples): mean {saved['jacobian_smoothed']['mean']:.4g}" in out
    assert f"smoothed net (4 samples): mean {saved['curvature_smoothed']['mean']:.4g}" in out
