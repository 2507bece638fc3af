"""Small modules with one job each: a newcomer reads any module of the package in one sitting."""

from pathlib import Path

MAX_LINES = 400
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "cbmir"


def test_no_module_exceeds_400_lines():
    sizes = {path: len(path.read_text().splitlines()) for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    too_long = [f"{path.relative_to(PACKAGE_DIR.parent)}: {n} lines" for path, n in sizes.items() if n > MAX_LINES]
    assert len(sizes) > 10  # the package was found
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job):\n  " + "\n  ".join(too_long)
