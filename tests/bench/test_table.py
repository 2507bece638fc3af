"""The printed table: the serve line shows a measured text query, or why it is absent."""

from __future__ import annotations

from cbmir.bench.table import serve_line


def figure(p50: float, p95: float, n: int) -> dict:
    return {"p50": p50, "p95": p95, "p50_ci": [p50 - 1, p50 + 1], "p95_ci": None, "n": n}


def serve(text: dict) -> dict:
    return {
        "n_items": 100,
        "image_query_ms": figure(20.0, 30.0, 9),
        "image_query_parts_ms": {"embed": {"p50": 12.0}, "search": {"p50": 3.0}},
        "image_query_overhead_ms": figure(8.0, 9.0, 9),
        "text_query_ms": text,
        "concurrent_16_ms": {**figure(100.0, 150.0, 32), "clients": 16},
    }


def test_a_measured_text_query_is_printed_with_its_interval():
    line = serve_line(serve(figure(54.6, 70.7, 74)))
    assert "text query: p50 54.6 [53.6-55.6] ms, p95 70.7 [no interval] ms (n=74);" in line


def test_an_absent_text_query_says_why():
    line = serve_line(serve({"p50": None, "p95": None, "absent": "resnet50: no text tower"}))
    assert "text query: absent (resnet50: no text tower);" in line
