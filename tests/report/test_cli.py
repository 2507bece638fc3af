"""cbmir.report.cli and the package: ``python -m cbmir.report``, its stdout, and no torch on import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cbmir.report
from cbmir.report.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_cli(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--no-figures", "--with-published"]) == 0
    printed = capsys.readouterr().out
    assert "vs paper: mean |Δ|" in printed and str(out / "index.md") in printed
    assert (out / "paper" / "comparison.md").exists() and (out / "published" / "tables.md").exists()
    assert "97.05" in (out / "published" / "tables.md").read_text()
    assert not (out / "paper" / "figures").exists()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 1


def test_defaults_follow_the_output_dir(tmp_path):
    args = parse_args([])
    assert args.out == args.inputs[0] / "report" and args.wandb_dir == args.inputs[0]
    args = parse_args([str(tmp_path), "--wandb", "--wandb-mode", "online", "--wandb-group", "g"])
    assert (args.inputs, args.wandb, args.wandb_mode, args.wandb_group) == ([tmp_path], True, "online", "g")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_importing_the_report_does_not_import_torch():
    """The report runs wherever the results are: none of its modules may pull in torch or lightning."""
    package = Path(cbmir.report.__file__).parent
    modules = sorted(f"cbmir.report.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert "cbmir.report.collect" in modules and "cbmir.report.figures" in modules
    check = "assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    code = f"import cbmir.report, {', '.join(modules)}, sys; {check}"
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=ROOT)


def test_python_m_cbmir_report(sweep, tmp_path):
    """The module entry point: the report's location on stdout, warnings on stderr through logging."""
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cbmir.report",
            str(sweep),
            str(tmp_path / "nowhere"),
            "--out",
            str(out),
            "--no-figures",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[cbmir] report: 9 cells (paper 7, standard 2)")
    assert "nowhere does not exist" in done.stderr and "nowhere" not in done.stdout
    assert (out / "index.md").is_file()
