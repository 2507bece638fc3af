"""Command line: ``python -m cbmir.query DIR image [image|folder …]``: the most similar cases of an index.

Each image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI; a folder of one DICOM series is one volume; another folder
stands for the supported files in it) is
decoded, embedded with the index's own model and searched (:class:`cbmir.index.retrieve.Retriever`).
Prints a table per query (rank, distance, label, source) and the majority-vote label with its
share, or ``--json``; ``--gallery out.png`` draws the queries with their neighbours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from cbmir.data.decode import BadFile, file_format, is_series_folder
from cbmir.errors import CbmirError
from cbmir.index.retrieve import Answer, Retriever, parse_where

log = logging.getLogger(__name__)


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; a folder of one DICOM series is one query (a volume); another folder becomes its supported
    image files (sorted, not recursive)."""
    out = []
    for path in paths:
        if is_series_folder(path):
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and file_format(p) is not None)
        else:
            out.append(path)
    return out


def distance_name(metric: str) -> str:
    return "sq. L2" if metric == "l2" else "cosine sim."


def table(answer: Answer, metric: str) -> str:
    v = answer.vote
    lines = [
        f"query {answer.name}",
        f"  suggested label: {v['label_name'] or v['label']} ({v['votes']}/{v['k']} = {100 * v['share']:.0f} %)",
        f"  {'rank':>4}  {distance_name(metric):>12}  {'label':<24}  source",
    ]
    for n in answer.neighbours:
        lines.append(f"  {n['rank']:>4}  {n['distance']:>12.6g}  {n['label_name'][:24]:<24}  {n['source']}")
    return "\n".join(lines)


def draw_gallery(path: Path, retriever: Retriever, answers: list[Answer]) -> Path:
    """The galleries' picture: queries (rows, captioned with the vote) and neighbours framed green when their
    label is the suggested one, red when not."""
    from cbmir.report.gallery import build_gallery, save_gallery

    index, m = retriever.index, retriever.manifest
    neighbours = np.array([[n["row"] for n in a.neighbours] for a in answers], dtype=np.int64)
    winners = index.labels[[a.vote["row"] for a in answers]]
    relevance = (index.labels[neighbours] == winners[:, None, :]).all(-1)
    gallery = build_gallery(
        np.stack([a.pixels for a in answers]),
        index.images if index.images is not None else index.thumbs,
        neighbours,
        winners,
        index.labels,
        relevance,
        class_names=index.class_names,
        queries=range(len(answers)),
        title=f"{m['model_label']} · {m['dataset_label']} · {m['size']} px · index of {m['n_items']} items",
        names={"query": [Path(a.name).name for a in answers], "database": [it["source"] for it in index.items]},
    )
    query_captions = {
        ((left + right) / 2, top) for (_, col), (top, left, _, right) in gallery.boxes.items() if col == 0
    }
    for j, (x, y, text, style) in enumerate(gallery.texts):  # the row captions say vote, not a known label
        if any(x == cx and top - 20 < y < top for cx, top in query_captions):
            gallery.texts[j] = (x, y, "unlabelled", style)
        elif text.startswith("query ") and "\n" in text:
            row = int(text.split("\n")[0].split()[1])
            share = 100 * answers[row].vote["share"]
            gallery.texts[j] = (x, y, text.split("\n")[0] + f"\nvote {share:.0f} %:\n" + text.split("\n", 1)[1], style)
        elif text.startswith("frame:"):
            gallery.texts[j] = (x, y, "frame: blue = query, green = the voted label, red = another label", style)
    return save_gallery(gallery, path)


def query_all(retriever: Retriever, files: list[Path], k: int, where: dict) -> tuple[list, int]:
    """Each file (or series folder) in turn; a file that cannot be searched is one error line, the rest go on."""
    answers, failed = [], 0
    for path in files:
        try:
            answers.append(retriever.query(str(path), None if path.is_dir() else path.read_bytes(), k, where))
        except (BadFile, OSError, CbmirError) as exc:
            failed += 1
            print(f"cbmir: error: {path}: {exc}", file=sys.stderr)
    return answers, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cbmir query", description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="an index folder (python -m cbmir.index build)")
    parser.add_argument("images", type=Path, nargs="*", help="image files or folders of them")
    parser.add_argument("--text", help="search by words (vision-language indexes; with images: a weighted mix)")
    parser.add_argument("--text-weight", type=float, default=0.5, help="weight of --text beside an image (0.5)")
    parser.add_argument("-k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--gallery", type=Path, help="also draw the queries with their neighbours to this PNG")
    parser.add_argument("--model", help="refuse unless the index holds this model's embeddings")
    parser.add_argument("--device", help="torch device for the query model (default: cuda if available, else cpu)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check (sizes are still checked)")
    parser.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=VALUE",
        help="search only items with this value (label, split, group, source); repeat: same column = any, else all",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[cbmir] %(message)s")
    files = expand(args.images)
    if args.text is None and not files:
        print("cbmir: error: no supported image among the given paths (or search by words: --text)", file=sys.stderr)
        return 2
    try:
        where = parse_where(args.where)
        if args.text is not None:  # query by words (cbmir.index.text_query)
            from cbmir.index.text_query import TextRetriever, ask_all

            retriever = TextRetriever(args.index, check=not args.no_verify, device=args.device)
            answers, failed = ask_all(retriever, args.text, files, args.k, args.text_weight, where)
        else:
            retriever = Retriever(args.index, model=args.model, check=not args.no_verify, device=args.device)
            retriever.allowed(where)
            answers, failed = query_all(retriever, files, args.k, where)
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    m = retriever.manifest
    metric = "cosine" if args.text is not None else m["metric"]  # text queries rank the joint vectors by cosine
    if args.json:
        out = {"index": str(retriever.index.root or retriever.index.folder), "model": m["model"], "metric": metric}
        print(json.dumps({**out, "results": [a.as_dict() for a in answers]}, indent=2))
    else:
        where_to = retriever.index.root or retriever.index.folder
        print(f"index {where_to}: {m['model']} · {m['dataset']} · {m['size']} px · {m['n_items']} items")
        for answer in answers:
            print(table(answer, metric))
    if args.gallery and answers:
        log.warning("gallery written to %s", draw_gallery(args.gallery, retriever, answers))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
