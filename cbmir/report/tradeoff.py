"""Speed, memory and quality of search settings for one (dataset, size, model): a table and a Pareto figure.

The rows are the cells of a sweep over ``search.index`` / ``search.pca`` / ``store.dtype``
(protocol ``standard``), exact search included:

    python -m cbmir.run -m protocol=standard dataset=pathmnist size=64 model=uni \\
        search.index=Flat,HNSW32,"'IVF256,Flat'","'IVF256,PQ32'" search.pca=null,128 store.dtype=float32
    python -m cbmir.report.tradeoff outputs/results --dataset pathmnist --size 64 --model uni --out tradeoff.png

A setting is on the Pareto front when no other is at least as good in memory, queries/s
and the metric, and better in one of them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def load_results(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("result.json"))]


def setting_label(result: dict[str, Any]) -> str:
    a = result.get("approximate")
    if not a:
        return "Flat (exact)"
    parts = [a["index"]] + ([a["parameters"]] if a.get("parameters") else [])
    return " ".join(parts)


def tradeoff_rows(
    results: Iterable[dict[str, Any]],
    *,
    dataset: str | None = None,
    size: int | None = None,
    model: str | None = None,
    metric: str = "mAP@5",
) -> list[dict[str, Any]]:
    """One row per search setting of the chosen cell: memory, queries/s, ``metric``, recall@k and the Pareto flag."""
    rows = []
    for r in results:
        if (dataset and r["dataset"] != dataset) or (size and r["size"] != size) or (model and r["model"] != model):
            continue
        a = r.get("approximate") or {}
        seconds = r.get("seconds", {}).get("search") or 0.0
        qps = r.get("queries_per_second") or (r["n_queries"] / seconds if seconds else float("nan"))
        rows.append(
            {
                "setting": setting_label(r),
                "protocol": r["protocol"],
                "memory_mb": (a.get("memory_bytes") or r["n_database"] * r["embedding_dim"] * 4) / 1e6,
                "queries_per_s": float(qps),
                metric: r["metrics"][metric],
                "recall": a.get(f"recall@{r['k']}", 1.0),
                f"Δ {metric}": a.get("metric_delta", {}).get(metric, 0.0),
                "build_s": a.get("build_seconds"),
            }
        )
    for row in rows:
        row["pareto"] = not any(_dominates(other, row, metric) for other in rows if other is not row)
    return sorted(rows, key=lambda row: row["memory_mb"])


def _dominates(a: dict[str, Any], b: dict[str, Any], metric: str) -> bool:
    no_worse = a["memory_mb"] <= b["memory_mb"] and a["queries_per_s"] >= b["queries_per_s"] and a[metric] >= b[metric]
    better = a["memory_mb"] < b["memory_mb"] or a["queries_per_s"] > b["queries_per_s"] or a[metric] > b[metric]
    return no_worse and better


def markdown_table(rows: list[dict[str, Any]], metric: str = "mAP@5") -> str:
    lines = [
        f"| setting | memory MB | queries/s | {metric} | Δ {metric} | recall | Pareto |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['memory_mb']:.2f} | {r['queries_per_s']:.0f} | {r[metric]:.2f} "
            f"| {r[f'Δ {metric}']:+.2f} | {r['recall']:.3f} | {'•' if r['pareto'] else ''} |"
        )
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, *, metric: str = "mAP@5", title: str = "") -> Path:
    """The figure of :func:`draw_tradeoff`, saved as ``path``."""
    fig = draw_tradeoff(rows, metric=metric, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def draw_tradeoff(rows: list[dict[str, Any]], *, metric: str = "mAP@5", title: str = ""):
    """Memory × queries/s (log axes), colour = ``metric``, size = recall; the Pareto front joined and labelled,
    its labels moved apart so that none covers another."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    x = [r["memory_mb"] for r in rows]
    y = [r["queries_per_s"] for r in rows]
    points = ax.scatter(
        x, y, c=[r[metric] for r in rows], s=[30 + 170 * r["recall"] ** 4 for r in rows], cmap="viridis", zorder=3
    )
    fig.colorbar(points, ax=ax, label=metric)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["memory_mb"])
    ax.plot([r["memory_mb"] for r in front], [r["queries_per_s"] for r in front], "--", color="grey", zorder=2)
    ax.set(xscale="log", yscale="log", xlabel="index memory (MB)", ylabel="queries / s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    labels = [
        ax.text(r["memory_mb"], r["queries_per_s"], f"{r['setting']}\nrecall {r['recall']:.2f}", fontsize=7)
        for r in front
    ]
    _separate(fig, ax, labels, x, y)
    return fig


def _separate(fig, ax, labels: list, x: list[float], y: list[float]) -> None:
    """Move the front's labels off each other and off the points (adjustText), with a line back to each point."""
    from adjustText import adjust_text
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not labels:
        return
    FigureCanvasAgg(fig)  # a bare Figure has no renderer; adjustText measures the texts with one
    fig.draw_without_rendering()
    adjust_text(labels, x=x, y=y, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})


def write_tradeoffs(
    result_dirs: Iterable[Path], out: Path, *, figures: bool = True, metric: str = "mAP@5"
) -> list[Path]:
    """``tradeoff/<dataset>_<size>_<model>.md`` (+ ``.png``) for every cell that was also run with approximate search.

    The rows of one (base protocol, dataset, size, model) are its exact cell and every ``+<search id>`` variant;
    ``cbmir.report`` calls this for the folders it collected, so a search sweep needs no extra command.
    """
    from cbmir.layout import safe_name

    results = [json.loads((Path(d) / "result.json").read_text()) for d in result_dirs]
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        base = r["protocol"].split("+")[0]
        if r.get("approximate") or r["protocol"] == base:
            groups.setdefault((base, r["dataset"], r["size"], r["model"]), []).append(r)
    written = []
    for (base, dataset, size, model), group in sorted(groups.items()):
        if not any(r.get("approximate") for r in group) or metric not in group[0]["metrics"]:
            continue
        rows = tradeoff_rows(group, metric=metric)
        stem = Path(out) / "tradeoff" / safe_name(f"{base}_{dataset}_{size}_{model}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        title = f"{model} · {dataset} · {size} px · {base}"
        stem.with_suffix(".md").write_text(f"# Search trade-off: {title}\n\n{markdown_table(rows, metric)}\n")
        written.append(stem.with_suffix(".md"))
        if figures:
            written.append(plot_tradeoff(rows, stem.with_suffix(".png"), metric=metric, title=title))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cbmir.report.tradeoff", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder (searched for result.json)")
    parser.add_argument("--dataset")
    parser.add_argument("--size", type=int)
    parser.add_argument("--model")
    parser.add_argument("--metric", default="mAP@5")
    parser.add_argument("--out", type=Path, default=Path("tradeoff.png"))
    args = parser.parse_args(argv)
    rows = tradeoff_rows(
        load_results(args.results), dataset=args.dataset, size=args.size, model=args.model, metric=args.metric
    )
    if not rows:
        parser.error("no result matches the chosen dataset, size and model")
    print(markdown_table(rows, args.metric))
    plot_tradeoff(rows, args.out, metric=args.metric, title=" · ".join(str(v) for v in (args.model, args.dataset,
                  args.size) if v))  # fmt: skip
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
