"""Latency of a text query against a 100,000-item index (docs/text.md): tokenise + text tower + exact search.

    python scripts/bench_text_query.py conch THREADS /path/to/conch_byte_level_bpe_uncased.json
    python scripts/bench_text_query.py openclip THREADS

Full-size towers with random weights (the time does not depend on the values), 100,000 random unit vectors of 512
dims in an exact inner-product FAISS index, queried through ``TextRetriever.ask`` (the path of ``cbmir query
--text``): 5 warm-up queries, then 40 timed ones of 2-6 words. Prints the median, quartiles and extremes.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cbmir.index.files import IndexFolder
from cbmir.index.text_query import TextRetriever
from cbmir.models.text import TextTower
from cbmir.search.exact import flat_index

TEXTS = ["cribriform prostate adenocarcinoma", "pleural effusion", "an H&E image of lymphocytes.", "mucin pool"]


def tower(which: str, tokenizer: str | None) -> TextTower:
    torch.manual_seed(0)
    if which == "conch":
        from cbmir.models.conch_text import ConchText, ConchTokenizer

        return TextTower(net=ConchText().eval(), tokenize=ConchTokenizer(Path(tokenizer or "")), dim=512)
    import open_clip

    from cbmir.models.open_clip_text import OpenClipText

    model = open_clip.create_model("ViT-B-16", pretrained=None)
    return TextTower(net=OpenClipText(model).eval(), tokenize=open_clip.get_tokenizer("ViT-B-16"), dim=512)


def main() -> None:
    which, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    n, d = 100_000, 512
    vectors = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        {
            "split": "train",
            "position": str(i),
            "source": "",
            "label": "0",
            "label_name": "x",
            "group": "",
            "withheld": "",
        }
        for i in range(n)
    ]
    faiss_index = flat_index(vectors, "cosine")
    index = IndexFolder(Path("."), {"seed": 0}, faiss_index, vectors, np.zeros((n, 1), np.int64), items, None, None,
                        np.zeros((28, 28), np.uint8))  # fmt: skip
    r = TextRetriever.__new__(TextRetriever)  # an index in memory: no folder, no files
    r.index, r.vectors, r.joint_index = index, vectors, faiss_index
    r.tower = tower(which, sys.argv[3] if len(sys.argv) > 3 else None)
    for text in TEXTS + TEXTS[:1]:
        r.ask(text, k=10)
    times, parts = [], []
    for i in range(40):
        t0 = time.perf_counter()
        answer = r.ask(TEXTS[i % len(TEXTS)], k=10)
        times.append(1000 * (time.perf_counter() - t0))
        parts.append(answer.seconds)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    text = 1000 * statistics.median(p["text"] for p in parts)
    search = 1000 * statistics.median(p["search"] for p in parts)
    print(
        f"{which}, {threads} thread(s): median {median:.1f} ms (IQR {q1:.1f}-{q3:.1f}, min {min(times):.1f}, "
        f"max {max(times):.1f}, n=40); text tower {text:.1f} ms, search {search:.1f} ms (medians)"
    )


if __name__ == "__main__":
    main()
