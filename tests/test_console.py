"""The console script ``cbmir``: a lazy dispatcher (no torch before a command needs it), one exit-status rule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cbmir.__main__ import COMMANDS, main


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "report", "index", "query", "serve", "doctor", "bench"):
        assert f"  {name} " in out
    assert set(COMMANDS) == {"run", "report", "index", "query", "serve", "doctor", "bench"}


def test_version_and_unknown_command(capsys):
    from cbmir import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cbmir {__version__}"
    assert main(["serch"]) == 2
    assert "unknown command 'serch'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["query", "--help"], ["index", "--help"], ["serve", "--help"]])
def test_help_imports_no_torch(argv):
    """Each answers in a fresh process without importing torch or lightning (so: well under a second)."""
    code = (
        "import sys\nfrom cbmir.__main__ import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'lightning') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_every_command_module_has_a_main():
    import importlib

    for command in COMMANDS.values():
        assert callable(importlib.import_module(command.module).main), command.module
