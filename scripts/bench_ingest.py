"""Time the ingestion of N small PNGs (docs/own-data.md's figure): ``python scripts/bench_ingest.py --n 100000``.

Writes N gray 28 x 28 PNGs in 10 class folders (100 patients each) under ``--work``, then
ingests them at 28 px with ``--workers`` processes, first cold, then once more (the quick
(size, mtime) check that finds everything unchanged). Prints wall time, files/s and the
peak resident memory of this process and of its worker processes.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import time
from pathlib import Path

import numpy as np


def write_pngs(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        c, patient = i % 10, (i // 10) % 100
        folder = root / f"class{c}" / f"p{patient:03d}"
        if i < 1000:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cbmir_bench_ingest"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cbmir.data import open_split

    tree, data = args.work / "tree", args.work / "data"
    if not tree.exists():
        t0 = time.perf_counter()
        write_pngs(tree, args.n)
        print(f"wrote {args.n} PNGs in {time.perf_counter() - t0:.1f} s")
    shutil.rmtree(data, ignore_errors=True)
    cfg = {"kind": "folder", "name": "bench", "root": str(tree), "workers": args.workers}
    for label in ("cold", "unchanged"):
        t0 = time.perf_counter()
        train = open_split(cfg, 28, data, "train")
        seconds = time.perf_counter() - t0
        print(f"{label}: {len(train)} database items, {seconds:.1f} s, {args.n / seconds:.0f} files/s")
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main {self_mb:.0f} MB, largest worker {child_mb:.0f} MB")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
