"""The golden-fixture recipe (seeded weights, synthetic images) shared by the equivalence tests.

It lives in ``scripts/make_golden.py``, which also runs in the reference environments, so the tests
load that very file rather than a copy of it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe():
    """``scripts/make_golden.py`` as a module, loaded afresh for each caller (no state shared between tests)."""
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
