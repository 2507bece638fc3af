"""User-supplied strings in CSVs that people open in spreadsheets: formula starts neutralised.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice and
Google Sheets as a formula (``=HYPERLINK(…)``, ``=cmd|' /C calc'!A0``). OWASP's CSV-injection guidance: prefix such
a value with a single quote, which the spreadsheet shows as text. Numbers written by cbmir itself are not touched.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is a string a spreadsheet would run as a formula; else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralise_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: neutralise(value) for key, value in row.items()}
