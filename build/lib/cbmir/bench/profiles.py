"""What a bench run measures: the settings, the two profiles (quick, full) as data, and the targets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Setting:
    """One extraction setting: ``model`` a conf/model name or ``timm=<arch>``; ``input`` None = the model's own."""

    model: str
    source: int
    input: int | None
    batch: int | None = None

    @property
    def label(self) -> str:
        name = self.model.split("=", 1)[1] if self.model.startswith("timm=") else self.model
        return f"{name} {self.source}->{self.input or 'auto'}"


def parse_setting(text: str) -> Setting:
    """``MODEL,SOURCE,INPUT[,BATCH]`` (INPUT may be ``auto``)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"a setting is MODEL,SOURCE,INPUT[,BATCH], got {text!r}")
    try:
        source = int(parts[1])
        inp = None if parts[2] in ("auto", "") else int(parts[2])
        batch = int(parts[3]) if len(parts) == 4 and parts[3] else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"SOURCE, INPUT and BATCH must be integers (INPUT may be auto): {text!r}"
        ) from None
    return Setting(parts[0], source, inp, batch)


@dataclass(frozen=True)
class Profile:
    """Every size a run uses; a CLI flag of the same name (``--max-batches``) overrides one field."""

    settings: tuple[str, ...]  # MODEL,SOURCE,INPUT[,BATCH]
    repeats: int  # timed runs per figure (the figure is their median, the spread their min-max)
    warmup: int  # untimed runs of every method first
    seconds: float  # target seconds of forward per timed run: sizes the pipeline runs
    min_batches: int  # at least this many batches per timed run (steady state, not loader start-up)
    max_batches: int  # at most this many
    volumes: int  # 3D: volumes through the batched pipeline
    slice_volumes: int  # 3D: volumes the one-slice-per-forward loop is timed on (then scaled: exactly linear)
    search_shape: tuple[int, int, int]  # database, queries, width
    loop_queries: int  # search: queries the per-query loop is timed on (then scaled)
    cache_images: tuple[int, int]  # cache: database and query images of the cell
    cache_repeats: int  # cache: cold + cached pairs timed (a pair is a whole cell twice)
    rss_images: int  # memory: images in the large memory-mapped split
    rss_size: int  # memory: their side
    rss_model_batches: int  # memory: batches through the real backbone before the stand-in reads it all

    def check(self) -> None:
        """Raise ValueError unless every size is positive (warm-up may be 0) and the shapes have their lengths."""
        if len(self.search_shape) != 3 or len(self.cache_images) != 2:
            raise ValueError("search_shape is N,Q,D and cache_images is N,Q")
        counts = [getattr(self, f.name) for f in fields(self) if f.name not in ("settings", "warmup")]
        flat = [v for c in counts for v in (c if isinstance(c, tuple) else (c,))]
        if min(flat) <= 0 or self.warmup < 0 or not self.settings:
            raise ValueError(f"sizes, repeats and settings must be positive (warm-up >= 0): {self}")


#: The study's settings: ResNet-50 at the size-28 cells (28 -> 32) and at 224 from 28-px sources, a ViT-B/16 at 224.
STUDY_SETTINGS = (
    "resnet50,28,32",
    "resnet50,28,224",
    "timm=vit_base_patch16_224,28,224",
    "timm=vit_base_patch16_224,64,224",
)

PROFILES: dict[str, Profile] = {
    "full": Profile(
        settings=STUDY_SETTINGS,
        repeats=3,
        warmup=1,
        seconds=4.0,
        min_batches=8,
        max_batches=64,
        volumes=64,
        slice_volumes=8,
        search_shape=(20_000, 1_000, 2048),
        loop_queries=50,
        cache_images=(2000, 500),
        cache_repeats=3,
        rss_images=20_000,
        rss_size=224,
        rss_model_batches=2,
    ),
    # The same figures at the size-28 setting only, each on enough work to reach steady state (minutes -> ~1.5 min).
    "quick": Profile(
        settings=(STUDY_SETTINGS[0],),
        repeats=3,
        warmup=1,
        seconds=1.5,
        min_batches=8,
        max_batches=32,
        volumes=16,
        slice_volumes=2,
        search_shape=(5_000, 500, 2048),
        loop_queries=20,
        cache_images=(1000, 250),
        cache_repeats=2,
        rss_images=2_000,
        rss_size=224,
        rss_model_batches=1,
    ),
}

#: What each headline figure should reach (bench.json ``targets``).
TARGETS = {
    "pipeline_efficiency": 0.90,
    "speedup_vs_conventional": 1.0,
    "speedup_3d_batched": 5.0,
    "speedup_search": 30.0,
}

#: PathMNIST's retrieval shape: the search and memory estimates scale to it.
PATHMNIST = {"database": 89_996, "query": 7_180, "dim": 2048}
