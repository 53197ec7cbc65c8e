"""Run every ``benchmarks/bench_*.py`` and write the figures to BENCHMARKS.md.

Each module exposes ``bench(quick: bool = False) -> list[dict]``; a row has ``area``, ``name``,
``value``, ``unit`` and, where a speed target exists, ``baseline_name``, ``ratio`` (value over a
baseline measured in the same run, so that shared, noisy machines still compare fairly),
``target`` and ``ok``.

    python benchmarks/run.py [--quick] [--only AREA ...] [--write BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    return module


def fmt(row: dict) -> str:
    value = row.get("value")
    vtxt = f"{value:,.4g}" if isinstance(value, (int, float)) else str(value)
    ratio = row.get("ratio")
    rtxt = f"{ratio:.3f}x vs {row.get('baseline_name', '')}" if isinstance(ratio, (int, float)) else ""
    target = row.get("target") or ""
    ok = "" if "ok" not in row else ("yes" if row["ok"] else "**NO**")
    return f"| {row.get('area', '')} | {row.get('name', '')} | {vtxt} {row.get('unit', '')} | {rtxt} | {target} | {ok} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--only", nargs="*", default=None, help="areas to run (file names bench_<area>.py)")
    ap.add_argument("--write", default=None, help="write the table to this Markdown file")
    args = ap.parse_args(argv)

    import torch

    files = sorted(HERE.glob("bench_*.py"))
    if args.only:
        files = [f for f in files if f.stem[len("bench_"):] in args.only]
    rows, failures = [], []
    t0 = time.perf_counter()
    for f in files:
        print(f"== {f.stem}", flush=True)
        try:
            got = load(f).bench(quick=args.quick)
        except Exception:  # a broken benchmark is reported, the others still run
            failures.append((f.stem, traceback.format_exc(limit=3)))
            print(failures[-1][1], file=sys.stderr)
            continue
        for row in got:
            print("  " + fmt(row), flush=True)
        rows.extend(got)
    elapsed = time.perf_counter() - t0

    cmd = "make bench" if not args.quick else "python benchmarks/run.py --quick"
    kept: list[str] = []
    provenance: dict[str, str] = {}  # area -> "`command` on date", for rows kept from an earlier run
    if args.only and args.write and Path(args.write).exists():  # the rerun areas replace theirs
        earlier = Path(args.write).read_text().splitlines()
        kept = [line for line in earlier if line.startswith("| ") and not line.startswith("| area ")
                and line.split("|")[1].strip() not in args.only]
        whole = next((line[len("Produced by "):].split(";")[0] for line in earlier if line.startswith("Produced by ")), "")
        listed = {line[3:].split("`", 1)[0]: line.split(": produced by ", 1)[1] for line in earlier
                  if line.startswith("- `") and ": produced by " in line}
        provenance = {area: listed.get(area, whole) for area in dict.fromkeys(line.split("|")[1].strip() for line in kept)}
        cmd = f"python benchmarks/run.py --only {' '.join(args.only)} --write {args.write}"
    device = "CPU"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{cmd}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {elapsed:.0f} s.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {device}. Shared machine: compare ratios (each measured "
        "against a baseline in the same run), not absolute times. GPU figures: BENCHMARKS_GPU.md "
        "(`benchmarks/gpu_check.py` on a CUDA machine).",
        "",
        *(["Rows kept from earlier runs:", *[f"- `{a}`: produced by {p}" for a, p in provenance.items()], ""]
          if provenance else []),
        "| area | benchmark | value | ratio | target | meets target |",
        "|---|---|---|---|---|---|",
        *kept,
        *[fmt(r) for r in rows],
    ]
    if failures:
        lines += ["", "## Benchmarks that failed to run", ""]
        lines += [f"- `{name}`: `{tb.strip().splitlines()[-1]}`" for name, tb in failures]
    text = "\n".join(lines) + "\n"
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    missed = [r for r in rows if r.get("ok") is False]
    if missed:
        print(f"{len(missed)} target(s) missed: " + ", ".join(f"{r['area']}/{r['name']}" for r in missed))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
