"""The `dipnet` command run in-process by the CLI tests (pytest puts this folder on sys.path)."""
from __future__ import annotations

from dipnet.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``dipnet ARGV``: (exit code, stdout, stderr); argparse's own exits (--help, usage) too."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def cli(capsys, *argv: str) -> tuple[int, str]:
    """:func:`run_cli` that fails on a traceback: (exit code, stripped stderr)."""
    code, _, err = run_cli(capsys, *argv)
    assert "Traceback" not in err
    return code, err.strip()
