"""Benchmark harness: cbmir's extraction, 3D, search and cache paths against the conventional ways.

    python -m cbmir.bench                     # the full profile: the study's four settings (minutes)
    python -m cbmir.bench --quick             # the quick profile: the size-28 setting, same keys (~1-2 min)
    python -m cbmir.bench --model resnet50 --source-size 28 --input-size 32 224
    python -m cbmir.bench --setting resnet50,28,32 --setting timm=vit_base_patch16_224,64,224,16
    python -m cbmir.bench compare OLD.json NEW.json --fail-on-regression

A setting is ``MODEL,SOURCE,INPUT[,BATCH]``: ``MODEL`` a ``conf/model`` name or ``timm=<arch>``, ``SOURCE``
the synthetic images' side, ``INPUT`` the network's input side (``auto``: the model's own preprocessing;
cbmir's CNNs run at the source size, raised to the protocol's 32 px). Weights are random unless
``--pretrained`` (speed does not depend on them, and random weights need no network). The sizes of a run come
from its profile (``cbmir.bench.profiles.PROFILES``); a flag of the same name overrides one of them.

Every ratio comes from paired rounds (``rounds``): the compared paths back to back in rotating order, a ratio
per round, the figure the median of those ratios with a 95 % interval; rounds continue until the interval is
within +-3 % or the comparison's time budget is spent, and a figure whose interval is wider than that, straddles
its target or is impossible (an efficiency above 1) is printed as unstable with the reason. ``machine`` records
what could disturb a run; ``compare`` judges two runs from their stored per-round samples.
One module per comparison:

- ``pipeline``: cbmir's extraction vs the backbone's forward alone (``pipeline_efficiency``) vs a PIL loader
  (``speedup_vs_conventional``);
- ``volume3d``: batched slices vs one slice per forward (``speedup_3d_batched``);
- ``search``: FAISS vs the per-query loop (``speedup_search``);
- ``cache``: a cell cold vs with its embeddings cached (``cache_speedup``);
- ``memory`` (+ ``memory_child``, its own process): peak RSS over a large memory-mapped split (``peak_rss_gb``);
- ``serve``: a synthetic index behind the real server on 127.0.0.1, queried through its API (``serve.*``).
"""
