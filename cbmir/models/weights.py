"""Weights from the hub or from local files, loaded strictly, with errors that say what to do."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cbmir.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def file_identity(path: str | Path) -> str:
    """A cheap, content-sensitive id of a weights file: size plus hashes of its head and tail.

    Hashing multi-GB checkpoints on every run would cost more than the runs it keys.
    """
    p = Path(path)
    size = p.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(p, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 0))
            digest.update(fh.read(1 << 20))
    return f"{p.name}:{size}:{digest.hexdigest()[:16]}"


def resolve_weights_file(weights: str | os.PathLike, candidates: tuple[str, ...] = ()) -> Path:
    """``model.weights`` may be a file or a folder holding one of ``candidates`` (the hub's file names)."""
    p = Path(weights).expanduser()
    if p.is_dir():
        for name in candidates:
            if (p / name).is_file():
                return p / name
        found = sorted(q.name for q in p.iterdir() if q.suffix in WEIGHT_SUFFIXES)
        if len(found) == 1:
            return p / found[0]
        raise WeightsError(
            f"model.weights={p} is a folder; expected one of {list(candidates) or list(WEIGHT_SUFFIXES)} in it, "
            f"found {found}"
        )
    if not p.is_file():
        raise WeightsError(f"model.weights={p} does not exist")
    return p


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, safely: safetensors, or a torch pickle with ``weights_only=True``.

    Unwraps ``state_dict``/``model`` wrappers and a DDP ``module.`` prefix, as upstream loaders do.
    """
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {p}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{p} holds a {type(sd).__name__}, not a state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what did not match."""
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:

        def head(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")

        raise WeightsError(
            f"{source} does not match the architecture: "
            f"{len(result.missing_keys)} missing keys [{head(result.missing_keys)}], "
            f"{len(result.unexpected_keys)} unexpected keys [{head(result.unexpected_keys)}]. "
            "Check that the file is the model's official checkpoint."
        )


@contextlib.contextmanager
def hub_errors(repo: str, *, model: str, gated: bool = False) -> Iterator[None]:
    """Turn the hub's exceptions into one message that says what happened and what to do."""
    try:
        yield
    except WeightsError:
        raise
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        page = f"https://huggingface.co/{repo}"
        local = f"or download the weights elsewhere and pass model.weights=/path/to/file (model {model})"
        if "GatedRepoError" in names or (gated and "401" in str(exc)):
            msg = (
                f"{repo} is gated and this account has no access: request access at {page}, "
                f"then set HF_TOKEN (or run `hf auth login`), {local}."
            )
        elif names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"} or isinstance(
            exc, (ConnectionError, TimeoutError)
        ):
            msg = (
                f"the weights of {repo} are not in the local hub cache and the hub cannot be reached "
                f"({type(exc).__name__}); connect once to fill the cache, {local}."
            )
            if gated:
                msg += f" The repository is gated: request access at {page} and set HF_TOKEN before downloading."
        elif names & {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError"}:
            msg = f"{repo} was not found on the hub ({exc}); for a gated repository set HF_TOKEN, {local}."
        else:
            raise
        raise WeightsError(msg) from exc


def hf_token() -> str | None:
    """The Hugging Face token from the environment (``HF_TOKEN``); ``None`` lets the hub use a saved login."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _has_token() -> bool:
    if hf_token():
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def hub_download(
    repo: str,
    filenames: str | tuple[str, ...],
    *,
    model: str,
    revision: str | None = None,
    gated: bool = False,
    optional: bool = False,
) -> Path | None:
    """Download (or find in the cache) the first of ``filenames`` that ``repo`` has, at ``revision``.

    Every hub failure becomes one :class:`WeightsError` that says what to do (``hub_errors``); a gated
    repository without any token says so first. ``optional=True`` returns ``None`` when no candidate
    exists (e.g. a side file such as ``config.json``) instead of raising.
    """
    from huggingface_hub import hf_hub_download

    names = (filenames,) if isinstance(filenames, str) else tuple(filenames)
    missing: list[str] = []
    for name in names:
        try:
            with hub_errors(repo, model=model, gated=gated):
                try:
                    return Path(hf_hub_download(repo, name, revision=revision, token=hf_token()))
                except Exception as exc:
                    kinds = {cls.__name__ for cls in type(exc).__mro__}
                    if "EntryNotFoundError" in kinds and "LocalEntryNotFoundError" not in kinds:
                        missing.append(name)
                        continue
                    if gated and "GatedRepoError" in kinds and not _has_token():
                        raise WeightsError(
                            f"{repo} is gated and no Hugging Face token is set: request access at "
                            f"https://huggingface.co/{repo}, then set HF_TOKEN (or run `hf auth login`), "
                            f"or download the weights elsewhere and pass model.weights=/path/to/file (model {model})."
                        ) from exc
                    raise
        except WeightsError as exc:
            if optional and "not in the local hub cache" in str(exc):
                return None
            raise
    if optional:
        return None
    raise WeightsError(
        f"{repo}{'@' + revision if revision else ''} has none of {list(names)}; "
        f"pass model.weights=/path/to/file (model {model})."
    )


def hub_identity(path: Path, repo: str, revision: str | None) -> str:
    """``hf-hub:repo/file@commit``: the commit is read from the hub cache's snapshot folder."""
    commit = revision or "main"
    parts = path.parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
    return f"hf-hub:{repo}/{path.name}@{commit}"


def load_checkpoint(
    cfg: Any,
    *,
    repo: str | None,
    filenames: tuple[str, ...],
    revision: str | None = None,
    gated: bool = False,
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict a backbone loads, and its identity.

    ``model.weights`` (a file, or a folder holding one of ``filenames``) wins; otherwise the hub
    (``repo`` at the pinned ``revision``, the first of ``filenames`` it has). A sharded safetensors
    checkpoint (``*.index.json``) is read shard by shard.
    """
    if cfg.get("weights"):
        path = resolve_weights_file(cfg.weights, filenames)
        return read_checkpoint(path, lambda name: path.parent / name), file_identity(path)
    if not repo:
        raise WeightsError(f"model {cfg.name}: its weights are not on the hub; pass model.weights=/path/to/file")
    path = hub_download(repo, filenames, model=cfg.name, revision=revision, gated=gated)
    assert path is not None

    def shard(name: str) -> Path:
        found = hub_download(repo, name, model=cfg.name, revision=revision, gated=gated)
        assert found is not None
        return found

    return read_checkpoint(path, shard), hub_identity(path, repo, revision)


def read_checkpoint(path: Path, shard_path: Callable[[str], Path]) -> dict[str, torch.Tensor]:
    """``read_state_dict``, or the union of the shards that a ``*.index.json`` names."""
    if not path.name.endswith(".index.json"):
        return read_state_dict(path)
    import json

    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except Exception as exc:
        raise WeightsError(f"cannot read the shard index {path}: {exc}") from exc
    out: dict[str, torch.Tensor] = {}
    for name in shards:
        out.update(read_state_dict(shard_path(name)))
    return out


def load_module_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """:func:`load_strict` that also turns shape mismatches (a ``RuntimeError`` of torch) into a ``WeightsError``."""
    try:
        load_strict(module, state_dict, source=source)
    except WeightsError:
        raise
    except RuntimeError as exc:
        raise WeightsError(f"{source} does not match the architecture: {exc}") from exc
