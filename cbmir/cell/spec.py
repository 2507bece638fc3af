"""The cell's configuration, parsed once: a frozen, typed :class:`CellSpec` built by :func:`build_spec`.

Validation *is* the building of the spec: every check that can run before a model is built or a file is
downloaded runs here, and what it parses (volume handling, statistics, search, protocol) is kept rather than
thrown away and parsed again later. Below the entry points, the cell's functions take the spec, not Hydra's
``cfg``. Torch-free, so that ``cbmir run`` reports a user's mistake before lightning or torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cbmir.data.pixels import DecodeLimits
from cbmir.errors import ConfigError, InvalidCellError
from cbmir.layout import cell_dir, cell_name, dataset_id, model_id, protocol_id
from cbmir.metrics.retrieval import TIE_RULES
from cbmir.search.approximate import SearchSpec, search_spec
from cbmir.search.exact import METRICS
from cbmir.stats.bootstrap import StatsSettings

AGGREGATES = ("concat", "mean", "max")
PLANES = ("axial", "tri")
#: ``protocol.kind`` of the text protocols (cbmir.cell.text)
TEXT_KINDS = ("text", "zeroshot")


@dataclass(frozen=True)
class VolumeSpec:
    """How a 3D volume goes through a 2D backbone: slicing planes and slice aggregation.

    ``axial`` slices along the first array axis only (the study); ``tri`` along all three
    axes. ``concat`` joins the slice embeddings in slice order (and plane order), ``mean``
    and ``max`` pool them into one d-dimensional, order-free embedding.
    """

    aggregate: str = "concat"
    planes: str = "axial"

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"dataset.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.planes not in PLANES:
            raise ConfigError(f"dataset.planes must be one of {PLANES}, got {self.planes!r}")

    def embedding_dim(self, d: int, side: int) -> int:
        slices = side * (3 if self.planes == "tri" else 1)
        return slices * d if self.aggregate == "concat" else d


@dataclass(frozen=True)
class ProtocolSpec:
    """How queries are scored: the ``protocol`` group."""

    name: str
    id: str  # the result folder's protocol part (approximate search and group exclusion included)
    metric: str
    vote_ties: str
    standard_metrics: bool
    min_source_size: int | None
    exclude_same_group: bool
    #: ``text`` (text → image) or ``zeroshot`` (image → text) for the text protocols, ``None`` for image retrieval
    kind: str | None = None
    #: zero-shot ranks reported (``protocol.top_k``) and the text protocol's bootstrap resamples
    top_k: tuple[int, ...] = (1, 3, 5)
    resamples: int = 1000


@dataclass(frozen=True)
class TrainerSpec:
    """The Lightning Trainer's placement: the ``trainer`` group."""

    accelerator: str
    devices: Any
    strategy: str
    num_nodes: int


@dataclass(frozen=True)
class CellSpec:
    """One validated cell: everything below the entry point reads this, never Hydra's config."""

    name: str
    out_dir: Path
    dataset_id: str
    model_id: str
    protocol: ProtocolSpec
    size: int
    k: int
    seed: int
    #: the ``dataset`` and ``model`` nodes, read-only: the data sources and model families interpret them
    dataset: DictConfig
    model: DictConfig
    volume: VolumeSpec | None
    volume_side: int | None
    stats: StatsSettings
    decode: DecodeLimits
    search: SearchSpec
    batch_size: int
    num_workers: int | str
    max_forward_batch: int
    min_forward_batch: int
    precision: str
    compile: bool
    trainer: TrainerSpec
    data_dir: Path
    output_dir: Path
    overwrite: bool
    use_cache: bool
    lock_wait: float | None
    gallery: bool
    #: the ``prompts`` group (text protocols): templates and class names, as plain containers
    prompts: dict[str, Any]
    #: the ``logger`` group and the resolved config (secrets still in: redacted wherever it is written)
    logger: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"


def _int(value: Any, key: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    return value


def _volume(cfg: DictConfig) -> tuple[VolumeSpec | None, int | None]:
    """3D handling and the edge of the resampled cube: the cell's size raised to the protocol's minimum (28 → 32)."""
    if cfg.dataset.get("dims", 2) != 3:
        return None, None
    volume = VolumeSpec(aggregate=cfg.dataset.get("aggregate", "concat"), planes=cfg.dataset.get("planes", "axial"))
    return volume, max(cfg.size, cfg.protocol.min_source_size or 0)


def _protocol(cfg: DictConfig, facts: Any) -> ProtocolSpec:
    p = cfg.protocol
    if p.metric not in METRICS:
        raise ConfigError(f"protocol.metric must be one of {list(METRICS)}, got {p.metric!r}")
    if p.vote_ties not in TIE_RULES:
        raise ConfigError(f"protocol.vote_ties must be one of {list(TIE_RULES)}, got {p.vote_ties!r}")
    exclude = bool(p.get("exclude_same_group", False))
    if exclude and facts.kind == "medmnist":
        raise ConfigError("protocol.exclude_same_group needs groups (patients): own data (dataset=folder|manifest)")
    kind = p.get("kind")
    if kind not in (None, *TEXT_KINDS):
        raise ConfigError(f"protocol.kind must be one of {list(TEXT_KINDS)} or absent (image retrieval), got {kind!r}")
    top_k = p.get("top_k", [1, 3, 5])
    if not top_k or any(isinstance(j, bool) or not isinstance(j, int) or j < 1 for j in top_k):
        raise ConfigError(f"protocol.top_k must be a list of positive integers, got {top_k!r}")
    if kind is not None:
        _check_text(cfg, kind)
    return ProtocolSpec(
        name=str(p.name),
        id=protocol_id(cfg),
        metric=str(p.metric),
        vote_ties=str(p.vote_ties),
        standard_metrics=bool(p.get("standard_metrics", False)),
        min_source_size=p.get("min_source_size"),
        exclude_same_group=exclude,
        kind=kind,
        top_k=tuple(int(j) for j in top_k),
        resamples=_int(p.get("resamples", 1000), "protocol.resamples", 1),
    )


def _check_text(cfg: DictConfig, kind: str) -> None:
    """A text protocol needs a text tower and an image embedding that lives in its space."""
    from cbmir.models.text import require_text  # torch-free: the towers are built later

    require_text(cfg.model, f"protocol={kind}")
    if cfg.dataset.get("dims", 2) == 3 and cfg.dataset.get("aggregate", "concat") == "concat":
        raise ConfigError(
            "text protocols compare a volume's embedding with a text's: use dataset.aggregate=mean or max "
            "(concat joins the slices' vectors into one that is no longer in the text space)"
        )


def _check_model(cfg: DictConfig) -> None:
    from cbmir.models import families  # the registry's table: no family module, no torch

    if cfg.model.get("family") not in families():
        raise ConfigError(f"model.family {cfg.model.get('family')!r} is not registered; known: {families()}")
    if cfg.model.get("weights") and not Path(str(cfg.model.weights)).expanduser().exists():
        raise ConfigError(f"model.weights={cfg.model.weights} does not exist")


def build_spec(cfg: DictConfig) -> CellSpec:
    """Validate the composed config and parse it into a :class:`CellSpec` (one message per mistake)."""
    from cbmir.data import dataset_facts

    facts = dataset_facts(cfg.dataset)
    decode = DecodeLimits.from_config(cfg.get("decode"))
    if not isinstance(cfg.size, int) or isinstance(cfg.size, bool) or cfg.size < 1:
        raise InvalidCellError(f"size must be a positive integer, got {cfg.size!r}")
    if facts.sizes is not None and cfg.size not in facts.sizes:
        sizes = list(facts.sizes)
        raise InvalidCellError(f"dataset {cfg.dataset.name} has sizes {sizes}; size={cfg.size} is not one of them")
    protocol = _protocol(cfg, facts)
    n_database = facts.n_database
    if not isinstance(cfg.k, int) or not 1 <= cfg.k <= (n_database or cfg.k):
        raise ConfigError(
            f"k={cfg.k} must be an integer between 1 and the database size ({n_database} for {cfg.dataset.name})"
        )
    batch_size = _int(cfg.batch_size, "batch_size", 1)
    workers = cfg.num_workers
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ConfigError(f"num_workers must be auto or a non-negative integer, got {workers!r}")
    _check_model(cfg)
    max_forward = _int(cfg.max_forward_batch, "max_forward_batch", 1)
    floor = cfg.get("min_forward_batch", 1)
    if not isinstance(floor, int) or not 1 <= floor <= max_forward:
        raise ConfigError(f"min_forward_batch must be an integer in [1, max_forward_batch], got {floor!r}")
    wait = cfg.get("lock_wait")
    if wait is not None and (not isinstance(wait, int | float) or wait < 0):
        raise ConfigError(f"lock_wait must be null (wait while the holder runs) or seconds >= 0, got {wait!r}")
    volume, side = _volume(cfg)
    t = cfg.trainer
    return CellSpec(
        name=cell_name(cfg),
        out_dir=cell_dir(cfg),
        dataset_id=dataset_id(cfg),
        model_id=model_id(cfg),
        protocol=protocol,
        size=cfg.size,
        k=cfg.k,
        seed=int(cfg.seed),
        dataset=cfg.dataset,
        model=cfg.model,
        volume=volume,
        volume_side=side,
        stats=StatsSettings.from_config(cfg.get("stats")),
        decode=decode,
        search=search_spec(cfg),
        batch_size=batch_size,
        num_workers=cfg.num_workers,
        max_forward_batch=max_forward,
        min_forward_batch=floor,
        precision=str(cfg.precision),
        compile=bool(cfg.compile),
        trainer=TrainerSpec(str(t.accelerator), t.devices, str(t.strategy), int(t.num_nodes)),
        data_dir=Path(str(cfg.paths.data_dir)),
        output_dir=Path(str(cfg.paths.output_dir)),
        overwrite=bool(cfg.overwrite),
        use_cache=bool(cfg.use_cache),
        lock_wait=None if wait is None else float(wait),
        gallery=bool(cfg.gallery),
        prompts=OmegaConf.to_container(cfg.prompts, resolve=True) if cfg.get("prompts") else {},  # type: ignore[arg-type]
        logger=OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {},  # type: ignore[arg-type]
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
