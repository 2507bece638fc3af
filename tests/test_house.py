"""The house: the README's layout names the package's folders, and the tests mirror them."""

from __future__ import annotations

import re

from tests.helpers.config import ROOT

PACKAGE = ROOT / "cbmir"
#: folders of the package that are data, not code
DATA_FOLDERS = {"conf", "resources"}


def _subpackages() -> set[str]:
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def test_the_readme_layout_names_every_subpackage_and_no_other():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Layout") :]
    block = block[block.index("\ncbmir/\n") : block.index("\nhydra_plugins/")]
    listed = set(re.findall(r"^  (\w+)/ ", block, flags=re.M))
    assert listed == _subpackages() | DATA_FOLDERS


def test_each_subpackage_says_what_it_holds():
    for name in _subpackages():
        doc = (PACKAGE / name / "__init__.py").read_text()
        assert doc.lstrip().startswith('"""'), f"cbmir/{name}/__init__.py has no docstring"


def test_tests_mirror_the_package():
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders - {"helpers", "golden"} <= _subpackages()
    assert not list((ROOT / "tests").rglob("*fixtures.py")) or all(
        p.parent.name == "helpers" for p in (ROOT / "tests").rglob("*fixtures.py")
    )
