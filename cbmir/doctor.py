"""``python -m cbmir.doctor [overrides]``: can this run or sweep go, here and now? One screen, before any work.

Takes the overrides of ``cbmir.launch.run`` (sweep syntax too: ``model=uni,conch size=64,224``, ``experiment=paper``),
expands them to the cells, and checks the stack, the devices, each model's weights (local file or the
Hugging Face cache; gated repositories, whether a token is set, never the token), each dataset file
(present, MD5 against the medmnist package), and free disk space against the sweep's estimated cache
and results. Network checks are skipped under ``HF_HUB_OFFLINE=1``, and the screen says what was not
checked. Exit status 1 when the sweep cannot run, with what to do.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from cbmir.data import ROLE_SPLIT, file_name, md5sum, medmnist_info, source_of
from cbmir.errors import CbmirError, InvalidCellError
from cbmir.launch.preflight import compose, every_cell, sweep_axes
from cbmir.layout import cell_name, dataset_id, model_id, versions
from cbmir.safety.files import free_bytes, human_bytes

TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Report:
    """What the doctor found: lines per section, blockers (with what to do) and what it could not check."""

    sections: dict[str, list[str]] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def add(self, section: str, ok: bool | None, text: str) -> None:
        mark = {True: "ok  ", False: "FAIL", None: "??  "}[ok]
        self.sections.setdefault(section, []).append(f"  {mark} {text}")

    def render(self) -> str:
        lines = []
        for section, rows in self.sections.items():
            lines += [section, *rows]
        if self.unchecked:
            lines += ["not checked", *(f"  ??   {u}" for u in dict.fromkeys(self.unchecked))]
        if self.blockers:
            lines += ["verdict: CANNOT RUN; to do:", *(f"  {i}. {b}" for i, b in enumerate(self.blockers, 1))]
        else:
            lines.append("verdict: ready to run")
        return "\n".join(lines)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


# -- the cells of a command line --------------------------------------------------------------------------------


def expand(overrides: list[str]) -> list[list[str]]:
    """The override list of every cell, as ``cbmir run -m`` would sweep them (an experiment's params included)."""
    return every_cell(sweep_axes([o for o in overrides if o not in ("-m", "--multirun")]))


# -- checks -------------------------------------------------------------------------------------------------------


def check_stack(report: Report, cfgs: list[DictConfig]) -> None:
    import torch

    found = versions()
    stack = " · ".join(f"{k} {v}" for k, v in found.items() if v and k in ("torch", "lightning", "timm", "faiss-cpu"))
    report.add("stack", True, f"python {platform.python_version()} · {stack}")
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        report.add("stack", True, f"FAISS {faiss.__version__} ({f'{gpus} GPU(s)' if gpus else 'CPU only'})")
    except ImportError:
        report.add("stack", False, "FAISS is not installed")
        report.blockers.append("install FAISS: pip install -e '.[cpu]' (or '.[gpu]')")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            report.add("devices", True, f"cuda:{i} {p.name}, {human_bytes(p.total_memory)}")
    else:
        report.add("devices", True, "no CUDA device: cells run on the CPU")
        if any(c.trainer.accelerator in ("gpu", "cuda") for c in cfgs):
            report.blockers.append("trainer=gpu was asked for and there is no CUDA device: use trainer=auto or cpu")


def weights_source(m: DictConfig) -> tuple[str | None, tuple[str, ...], str | None]:
    """``(repo, candidate files, revision)`` of a model's hub weights (``repo`` None when not on the hub)."""
    hub = m.get("hub") or {}
    if hub.get("repo"):
        return str(hub.repo), tuple(hub.get("files") or ()), hub.get("revision")
    if m.get("family") in ("timm", "timm_cnn") and m.get("arch"):
        arch = str(m.arch)
        return (arch[7:] if arch.startswith("hf-hub:") else f"timm/{arch}"), TIMM_FILES, None
    if m.get("family") == "open_clip" and m.get("arch"):
        import open_clip

        from cbmir.models.open_clip import OPEN_CLIP_FILES

        arch = str(m.arch)
        if arch.startswith("hf-hub:"):
            return arch[7:], OPEN_CLIP_FILES, hub.get("revision")
        repo = (open_clip.get_pretrained_cfg(arch, m.get("tag")) or {}).get("hf_hub", "").strip("/")
        return repo or None, OPEN_CLIP_FILES, hub.get("revision")
    return None, (), None


def check_model(report: Report, m: DictConfig, name: str) -> None:
    licence = m.get("licence") or "not recorded (see the model's page)"
    if m.get("weights"):
        path = Path(str(m.weights)).expanduser()
        if path.exists():
            report.add("models", True, f"{name}: local weights {path} · licence {licence}")
        else:
            report.add("models", False, f"{name}: model.weights={path} does not exist")
            report.blockers.append(f"put {name}'s weights at {path}, or fix model.weights")
        return
    if not m.get("pretrained", True):
        report.add("models", True, f"{name}: random weights (model.pretrained=false), nothing to fetch")
        return
    repo, files, revision = weights_source(m)
    if repo is None:
        report.add("models", False, f"{name}: its weights are not on the hub; model.weights=/path/to/file is needed")
        report.blockers.append(f"download {name}'s weights (see conf/model/{m.name}.yaml) and pass model.weights=")
        return
    from huggingface_hub import try_to_load_from_cache

    cached = [f for f in files if isinstance(try_to_load_from_cache(repo, f, revision=revision), str)]
    gated = bool((m.get("hub") or {}).get("gated", False))
    token = _token_set()
    facts = [f"hub {repo}", "gated" if gated else "open", "token set" if token else "no token"]
    if cached:
        report.add("models", True, f"{name}: cached ({cached[0]}) · {', '.join(facts)} · licence {licence}")
        return
    if offline():
        report.add(
            "models",
            False,
            f"{name}: not in the local hub cache (HF_HUB_OFFLINE=1) · {', '.join(facts)} · licence {licence}",
        )
        report.unchecked.append("hub reachability and access (HF_HUB_OFFLINE=1)")
        report.blockers.append(
            f"fetch {name} on a machine with network (python -m cbmir.run model={m.name} with HF_HUB_OFFLINE unset"
            + (", after requesting access and setting HF_TOKEN" if gated else "")
            + "), or pass model.weights=/path/to/file"
        )
        return
    problem = _hub_problem(repo, files, revision)
    ok = problem is None
    report.add("models", ok, f"{name}: to download · {', '.join(facts)} · {problem or 'reachable'} · licence {licence}")
    if not ok:
        hint = f"request access at https://huggingface.co/{repo} and set HF_TOKEN" if gated and not token else problem
        report.blockers.append(f"{name}: {hint}")


def _token_set() -> bool:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:
        return False


def _hub_problem(repo: str, files: tuple[str, ...], revision: str | None) -> str | None:
    """Why the hub would not serve any of ``files`` (``None``: one is reachable); a HEAD request, 10 s at most."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    last = "no candidate file"
    for name in files:
        try:
            get_hf_file_metadata(hf_hub_url(repo, name, revision=revision), timeout=10)
            return None
        except Exception as exc:  # gated, missing, network down: all say why in their class name
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return last


def dataset_bytes(d: DictConfig, size: int) -> int:
    """Pixels of the whole file (train + val + test), the size of its extracted arrays."""
    info = medmnist_info(d.flag)
    n = sum(info["n_samples"].values())
    per_image = size**3 if d.get("dims", 2) == 3 else size * size * int(info.get("n_channels", 1))
    return n * per_image


def check_dataset(report: Report, cfg: DictConfig) -> int:
    """Check one (dataset, size) file; return the bytes it still needs on disk (download + extraction)."""
    d, size = cfg.dataset, cfg.size
    label = f"{d.name} {size} px"
    if d.get("kind", "medmnist") != "medmnist":
        report.add("data", None, f"{label}: own data ({d.kind}) is checked when it is ingested")
        report.unchecked.append(f"own data {d.name}")
        return 0
    path = Path(cfg.paths.data_dir) / file_name(d.flag, size)
    url, md5 = source_of(d.flag, size)
    if not path.exists():
        need = 2 * dataset_bytes(d, size)
        if not d.get("download", True):
            report.add("data", False, f"{label}: {path} is missing and dataset.download=false")
            report.blockers.append(f"put {path.name} (MD5 {md5}, from {url}) in {path.parent}")
        elif offline():
            report.add("data", False, f"{label}: {path} is missing; it would be downloaded ({url})")
            report.unchecked.append("whether the dataset server is reachable (HF_HUB_OFFLINE=1: no network checks)")
            report.blockers.append(f"download {path.name} from {url} (MD5 {md5}) into {path.parent}")
        else:
            report.add("data", True, f"{label}: missing; will be downloaded from {url} (~{human_bytes(need / 2)})")
        return need
    marker = path.with_suffix("") / ".complete"
    if not d.get("verify_md5", True):
        report.add("data", True, f"{label}: {path} present (MD5 not checked: dataset.verify_md5=false)")
    elif marker.exists() and marker.stat().st_mtime >= path.stat().st_mtime:
        report.add("data", True, f"{label}: {path} present, MD5 verified when it was extracted")
    elif md5sum(path) == md5:
        report.add("data", True, f"{label}: {path} present, MD5 verified")
    else:
        report.add("data", False, f"{label}: {path} does not match the official MD5 {md5}")
        report.blockers.append(f"delete {path} and download it again from {url}")
    return 0 if marker.exists() else dataset_bytes(d, size)


def embedding_width(cfg: DictConfig) -> int:
    from cbmir.cell.spec import build_spec

    spec = build_spec(cfg)
    return spec.volume.embedding_dim(int(cfg.model.dim), spec.volume_side) if spec.volume else int(cfg.model.dim)


def result_bytes(cfg: DictConfig) -> tuple[int, int]:
    """Estimated ``(cache, result)`` bytes of one cell: float32 embeddings of both splits; neighbours and scores."""
    info = medmnist_info(cfg.dataset.flag)["n_samples"]
    n_db, n_q = info[ROLE_SPLIT["database"]], info[ROLE_SPLIT["query"]]
    return (n_db + n_q) * embedding_width(cfg) * 4, n_q * (cfg.k * 12 + 200) + 2_000_000


# -- the whole screen ------------------------------------------------------------------------------------------


def diagnose(overrides: list[str]) -> Report:
    from cbmir.cell.spec import build_spec

    report = Report()
    cells, invalid = [], []
    for cell in expand(overrides):
        cfg = compose(cell)
        try:
            build_spec(cfg)
        except InvalidCellError as exc:
            invalid.append(f"{cell_name(cfg)}: {exc}")
            continue
        except CbmirError as exc:
            if "model.weights" not in str(exc):  # a missing local file is the models section's to report
                report.blockers.append(f"{cell_name(cfg)}: {exc}")
                continue
        cells.append(cfg)
    summary = f"{len(cells)} cell(s) to run" + (f", {len(invalid)} invalid (skipped in a sweep)" if invalid else "")
    report.add("cells", bool(cells), summary)
    if not cells:
        report.blockers.append("no valid cell: check the overrides")
        return report
    check_stack(report, cells)
    for cfg in {model_id(c): c for c in cells}.values():
        check_model(report, cfg.model, model_id(cfg))
    need_data = sum(check_dataset(report, c) for c in {(dataset_id(c), c.size): c for c in cells}.values())
    cache = {(model_id(c), dataset_id(c), c.size, c.precision, str(c.protocol.min_source_size)): c for c in cells}
    cache_bytes = sum(result_bytes(c)[0] for c in cache.values())
    results = sum(result_bytes(c)[1] for c in cells)
    out = Path(cells[0].paths.output_dir)
    biggest = max(result_bytes(c)[0] for c in cells)  # shards beside the merged file while one cell extracts
    need = cache_bytes + results + biggest + need_data
    free = free_bytes(out)
    text = (
        f"{out}: needs ~{human_bytes(need)} (cache {human_bytes(cache_bytes)}, results {human_bytes(results)}, "
        f"data {human_bytes(need_data)}), {human_bytes(free)} free"
    )
    report.add("disk", free >= need, text)
    if free < need:
        report.blockers.append(f"free {human_bytes(need - free)} under {out}, or set paths.output_dir elsewhere")
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    report = diagnose(args)
    print(f"cbmir doctor{' (offline: HF_HUB_OFFLINE=1)' if offline() else ''}")
    print(report.render())
    return 1 if report.blockers else 0


if __name__ == "__main__":
    sys.exit(main())
