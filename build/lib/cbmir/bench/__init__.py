"""Benchmark harness: cbmir's extraction, 3D, search and cache paths against the conventional ways.

    python -m cbmir.bench                     # the full profile: the study's four settings (minutes)
    python -m cbmir.bench --quick             # the quick profile: the size-28 setting, same keys (~1-2 min)
    python -m cbmir.bench --model resnet50 --source-size 28 --input-size 32 224
    python -m cbmir.bench --setting resnet50,28,32 --setting timm=vit_base_patch16_224,64,224,16

A setting is ``MODEL,SOURCE,INPUT[,BATCH]``: ``MODEL`` a ``conf/model`` name or ``timm=<arch>``, ``SOURCE``
the synthetic images' side, ``INPUT`` the network's input side (``auto``: the model's own preprocessing;
cbmir's CNNs run at the source size, raised to the protocol's 32 px). Weights are random unless
``--pretrained`` (speed does not depend on them, and random weights need no network). The sizes of a run come
from its profile (``cbmir.bench.profiles.PROFILES``); a flag of the same name overrides one of them.

Each figure is a median over the profile's repeats after its warm-up, reported with its [min-max] spread;
the methods of a comparison are interleaved run by run, so load from other processes hits them alike.
One module per comparison:

- ``pipeline``: cbmir's extraction vs the backbone's forward alone (``pipeline_efficiency``) vs a PIL loader
  (``speedup_vs_conventional``);
- ``volume3d``: batched slices vs one slice per forward (``speedup_3d_batched``);
- ``search``: FAISS vs the per-query loop (``speedup_search``);
- ``cache``: a cell cold vs with its embeddings cached (``cache_speedup``);
- ``memory`` (+ ``memory_child``, its own process): peak RSS over a large memory-mapped split (``peak_rss_gb``).
"""
