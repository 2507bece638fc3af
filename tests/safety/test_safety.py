"""Safe loading across the package (an AST scan of cbmir/) and no secret in anything a run writes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from cbmir.safety.secrets import REDACTED, redact, redact_text
from tests.helpers.config import ROOT, base_overrides

PACKAGE = ROOT / "cbmir"
#: Calls that run code from a file's contents.
UNSAFE_LOADERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("cPickle", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("yaml", "unsafe_load"),
}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe load in ``source`` as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func, where = node.func, f"{filename}:{node.lineno}"
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            found.append(f"{where}: {func.id}()")
        if not isinstance(func, ast.Attribute):
            continue
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if (owner, func.attr) in UNSAFE_LOADERS:
            found.append(f"{where}: {owner}.{func.attr}")
        if owner == "torch" and func.attr == "load" and not _is_const(_keyword(node, "weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and func.attr == "load" and not _is_const(_keyword(node, "allow_pickle"), False):
            found.append(f"{where}: np.load without allow_pickle=False")
        if _is_const(_keyword(node, "allow_pickle"), True):
            found.append(f"{where}: allow_pickle=True")
        if owner == "yaml" and func.attr == "load" and "Safe" not in ast.unparse(_keyword(node, "Loader") or node):
            found.append(f"{where}: yaml.load without SafeLoader")
        if func.attr == "extractall" and not (_keyword(node, "members") or _keyword(node, "filter")):
            found.append(f"{where}: extractall without a member check (members= or filter='data')")
    return found


def test_scanner_catches_each_unsafe_load():
    bad = """
import pickle, torch, numpy as np, tarfile, yaml
pickle.load(f); pickle.loads(b); torch.load(p); torch.load(p, weights_only=False)
np.load(p); np.load(p, allow_pickle=True); eval(s); exec(s); yaml.load(t)
tarfile.open(p).extractall(d); yaml.unsafe_load(t)
"""
    found = unsafe_calls(bad)
    assert len(found) == 12, found
    good = """
import torch, numpy as np, tarfile, yaml
torch.load(p, map_location="cpu", weights_only=True); np.load(p, mmap_mode="r", allow_pickle=False)
model.eval(); tarfile.open(p).extractall(d, filter="data"); yaml.load(t, Loader=yaml.SafeLoader)
"""
    assert unsafe_calls(good) == []


def test_package_loads_nothing_unsafely():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in unsafe_calls(path.read_text(), str(path))]
    assert found == [], "\n".join(found)


def test_redaction():
    os.environ["CBMIR_TEST_TOKEN"] = "plain-secret-value-123"
    try:
        assert redact_text("x plain-secret-value-123 y") == f"x {REDACTED} y"
    finally:
        del os.environ["CBMIR_TEST_TOKEN"]
    assert redact_text("--hub_token=abc") == f"--hub_token={REDACTED}"
    assert redact_text("note: hf_" + "a" * 30) == f"note: {REDACTED}"
    assert redact({"api_key": "x", "reg_tokens": 4, "kwargs": {"global_pool": "token"}}) == {
        "api_key": REDACTED,
        "reg_tokens": 4,
        "kwargs": {"global_pool": "token"},
    }


@pytest.mark.slow
def test_no_secret_in_anything_a_run_writes(data_dir, tmp_path):
    hf_token = "hf_" + "FakeHubToken0123456789abcdef"
    secrets = {
        "HF_TOKEN": hf_token,
        "WANDB_API_KEY": "0123456789abcdef0123456789abcdef0fake999",
        "CBMIR_SERVICE_PASSWORD": "correct-horse-battery-staple",
    }
    in_config = "hf_" + "TokenInAnOverride9876543210zyx"
    env = {**os.environ, **secrets, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out"
    overrides = [o for o in base_overrides(data_dir, out) if not o.startswith("logger=")]
    proc = subprocess.run(
        [sys.executable, "-m", "cbmir.run", *overrides, "logger=default", f"+hub_token={in_config}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "result.json" for p in written)
    assert any(p.suffix == ".wandb" for p in written), "the W&B run must have been written (offline)"
    assert any(p.parent.name == ".hydra" for p in written)
    leaks = [
        f"{p.relative_to(out)} holds {name}"
        for p in written
        for name, value in [*secrets.items(), ("the override", in_config)]
        if value.encode() in p.read_bytes()
    ]
    leaks += [
        f"the console holds {name}"
        for name, value in [*secrets.items(), ("the override", in_config)]
        if value in proc.stdout + proc.stderr
    ]
    assert leaks == []
    assert REDACTED in (next(out.rglob(".hydra/config.yaml"))).read_text()
