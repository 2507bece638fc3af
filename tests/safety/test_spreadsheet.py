import pytest

from cbmir.safety.spreadsheet import neutralise, neutralise_row


@pytest.mark.parametrize(
    "raw",
    ['=HYPERLINK("http://x","y")', "=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(1)", "\tx", "\rx", "=1+1"],
)
def test_formula_starts_are_quoted(raw):
    assert neutralise(raw) == "'" + raw


@pytest.mark.parametrize("value", ["benign", "a=b", "Doe^John", "", 3, -1.5, None])
def test_other_values_are_unchanged(value):
    assert neutralise(value) == value


def test_a_row_is_neutralised_cell_by_cell():
    assert neutralise_row({"label": "=1+1", "row": 3}) == {"label": "'=1+1", "row": 3}
