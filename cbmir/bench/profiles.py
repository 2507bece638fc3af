"""What a bench run measures: the settings, the two profiles (quick, full) as data, and the targets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from cbmir.bench.rounds import Budget


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
    warmup: int  # untimed runs of every method first
    min_rounds: int  # paired rounds at least (6: the fewest that give a 95 % interval of the median)
    max_rounds: int  # paired rounds at most
    budget_s: float  # wall seconds of rounds per extraction setting (then rounds stop, converged or not)
    section_budget_s: float  # the same for the 3D, search and cache comparisons each
    halfwidth: float  # rounds stop early once every interval's relative half-width is at most this
    seconds: float  # target seconds of forward per timed run: sizes the pipeline runs
    min_batches: int  # at least this many batches per timed run (steady state, not loader start-up)
    max_batches: int  # at most this many
    volumes: int  # 3D: volumes through the batched pipeline
    slice_volumes: int  # 3D: volumes the one-slice-per-forward loop is timed on (then scaled: exactly linear)
    search_shape: tuple[int, int, int]  # database, queries, width
    loop_queries: int  # search: queries the per-query loop is timed on (then scaled)
    cache_images: tuple[int, int]  # cache: database and query images of the cell
    rss_images: int  # memory: images in the large memory-mapped split
    rss_size: int  # memory: their side
    rss_model_batches: int  # memory: batches through the real backbone before the stand-in reads it all
    serve_items: int  # serve: items of the synthetic index behind the real server
    serve_budget_s: float  # serve: wall seconds of sequential queries (then of concurrent ones)
    serve_clients: int  # serve: concurrent loopback clients
    serve_client_queries: int  # serve: queries each concurrent client sends per round

    def budget(self, seconds: float) -> Budget:
        """When a comparison's paired rounds stop, given its wall-time budget."""
        return Budget(self.min_rounds, self.max_rounds, seconds, self.halfwidth)

    def check(self) -> None:
        """Raise ValueError unless every size is positive (warm-up may be 0) and the shapes have their lengths."""
        if len(self.search_shape) != 3 or len(self.cache_images) != 2:
            raise ValueError("search_shape is N,Q,D and cache_images is N,Q")
        counts = [getattr(self, f.name) for f in fields(self) if f.name not in ("settings", "warmup")]
        flat = [v for c in counts for v in (c if isinstance(c, tuple) else (c,))]
        if min(flat) <= 0 or self.warmup < 0 or not self.settings:
            raise ValueError(f"sizes, rounds, budgets and settings must be positive (warm-up >= 0): {self}")
        if self.min_rounds > self.max_rounds or self.halfwidth >= 1:
            raise ValueError(f"min_rounds <= max_rounds and halfwidth < 1 are needed: {self}")


#: The study's settings: ResNet-50 at the size-28 cells (28 -> 32) and at 224 from 28-px sources, a ViT-B/16 at 224.
STUDY_SETTINGS = (
    "resnet50,28,32",
    "resnet50,28,224",
    "timm=vit_base_patch16_224,28,224",
    "timm=vit_base_patch16_224,64,224",
)

PROFILES: dict[str, Profile] = {
    # ~15 min on 2 CPU cores: many short paired rounds per setting rather than three long runs.
    "full": Profile(
        settings=STUDY_SETTINGS,
        warmup=1,
        min_rounds=6,
        max_rounds=200,
        budget_s=120.0,
        section_budget_s=60.0,
        halfwidth=0.03,
        seconds=1.0,
        min_batches=2,
        max_batches=16,
        volumes=32,
        slice_volumes=4,
        search_shape=(20_000, 1_000, 2048),
        loop_queries=25,
        cache_images=(2000, 500),
        rss_images=20_000,
        rss_size=224,
        rss_model_batches=2,
        serve_items=100_000,
        serve_budget_s=60.0,
        serve_clients=16,
        serve_client_queries=4,
    ),
    # The same figures at the size-28 setting only, on less work and shorter budgets (~3 min on 2 CPU cores).
    "quick": Profile(
        settings=(STUDY_SETTINGS[0],),
        warmup=1,
        min_rounds=6,
        max_rounds=200,
        budget_s=40.0,
        section_budget_s=15.0,
        halfwidth=0.03,
        seconds=0.5,
        min_batches=2,
        max_batches=16,
        volumes=16,
        slice_volumes=2,
        search_shape=(5_000, 500, 2048),
        loop_queries=20,
        cache_images=(1000, 250),
        rss_images=2_000,
        rss_size=224,
        rss_model_batches=1,
        serve_items=10_000,
        serve_budget_s=10.0,
        serve_clients=16,
        serve_client_queries=2,
    ),
}

#: What each ratio should reach (bench.json ``targets``): met when its interval's lower end clears the target.
TARGETS = {
    "pipeline_efficiency": 0.90,
    "speedup_vs_conventional": 1.0,
    "speedup_3d_batched": 5.0,
    "speedup_search": 30.0,
}

#: The search service's targets (milliseconds; met when the interval's upper end is under them): a warm image
#: query within its embed time + 50 ms, a text query under 100 ms, the 95th percentile under 1 s with 16 clients.
SERVE_TARGETS = {"image_query_overhead_ms": 50.0, "text_query_ms": 100.0, "concurrent_16_p95_ms": 1000.0}

#: PathMNIST's retrieval shape: the search and memory estimates scale to it.
PATHMNIST = {"database": 89_996, "query": 7_180, "dim": 2048}
