"""Weights from the hub or from local files, loaded strictly, with errors that say what to do.

Every family that holds its own network loads through :func:`load_weights`: read the state dict
(``model.weights`` or the pinned hub file, sharded or not), build the network, map the keys with the
family's hook, load strictly. Two families of generic upstream models load through their library's own
strict loader instead, because it runs each model's checkpoint filter: ``timm``/``timm_cnn``
(:func:`create_timm_model`) and ``open_clip`` (``open_clip.load_checkpoint(strict=True)``).
"""

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
from cbmir.models.common import plain

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

#: A family's key-map hook: the checkpoint's state dict (and the built network) → the network's keys.
KeyMap = Callable[[Mapping[str, torch.Tensor], nn.Module], Mapping[str, torch.Tensor]]


def wants_weights(cfg: Any) -> bool:
    """A local file always loads; otherwise ``model.pretrained`` (default true) decides."""
    return bool(cfg.get("weights")) or bool(cfg.get("pretrained", True))


def hub_block(cfg: Any) -> dict[str, Any]:
    """``model.hub``: ``repo``, ``files`` (candidates, first found wins), ``revision`` (pinned commit), ``gated``."""
    hub = plain(cfg.get("hub")) or {}
    files = hub.get("files") or []
    if isinstance(files, str):
        files = [files]
    return {
        "repo": hub.get("repo"),
        "files": tuple(files),
        "revision": hub.get("revision"),
        "gated": bool(hub.get("gated", False)),
    }


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


def load_weights(
    cfg: Any, build: Callable[[], nn.Module], key_map: KeyMap, *, local: Path | None = None
) -> tuple[nn.Module, str]:
    """The one loading path: the network ``build()`` makes, with the configured weights, and their identity.

    Random weights (``model.pretrained=false``, no ``model.weights``) give ``(build(), "random")``. Otherwise
    the state dict is read first (a hub or file problem shows before anything is built): ``local`` or
    ``model.weights`` (a file, or a folder holding one of ``model.hub.files``), else the hub file at the pinned
    revision; then ``key_map`` turns it into the network's keys and :func:`load_strict` loads it.
    """
    if not wants_weights(cfg):
        return build(), "random"
    sd, source = read_weights(cfg, hub_block(cfg), local=local)
    net = build()
    load_strict(net, key_map(sd, net), source=f"{source} (model {cfg.name})")
    return net, source


def read_weights(cfg: Any, hub: Mapping[str, Any], *, local: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of ``local``, ``model.weights`` or the hub (``hub_block``), and its identity.

    A sharded safetensors checkpoint (``*.index.json``) is read shard by shard.
    """
    if local is None and cfg.get("weights"):
        local = resolve_weights_file(cfg.weights, hub["files"])
    if local is not None:
        path = local
        return _read_sharded(path, lambda name: path.parent / name), file_identity(path)
    repo, revision, gated = hub["repo"], hub["revision"], hub["gated"]
    if not repo:
        raise WeightsError(f"model {cfg.name}: its weights are not on the hub; pass model.weights=/path/to/file")

    def fetch(names: str | tuple[str, ...]) -> Path:
        found = hub_download(repo, names, model=cfg.name, revision=revision, gated=gated)
        assert found is not None
        return found

    path = fetch(hub["files"])
    return _read_sharded(path, fetch), hub_identity(path, repo, revision)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what did not match (keys or shapes)."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise WeightsError(f"{source} does not match the architecture: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:

        def head(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")

        raise WeightsError(
            f"{source} does not match the architecture: "
            f"{len(result.missing_keys)} missing keys [{head(result.missing_keys)}], "
            f"{len(result.unexpected_keys)} unexpected keys [{head(result.unexpected_keys)}]. "
            "Check that the file is the model's official checkpoint."
        )


def create_timm_model(cfg: Any, arch: str, *, files: tuple[str, ...], **kwargs: Any) -> tuple[nn.Module, Path | None]:
    """``timm.create_model(arch, num_classes=0, **kwargs)`` with timm's own strict pretrained loader.

    ``model.weights`` (a file, or a folder holding one of ``files``) goes through the same loader as the hub
    file (``pretrained_cfg_overlay``), so the model's checkpoint filter runs either way. Returns the model and
    the local file, if one was loaded.
    """
    import timm

    path = resolve_weights_file(cfg.weights, files) if cfg.get("weights") else None
    repo = arch[len("hf-hub:") :] if arch.startswith("hf-hub:") else f"timm/{arch}"
    try:
        with hub_errors(repo, model=cfg.name):
            model = timm.create_model(
                arch,
                pretrained=wants_weights(cfg),
                num_classes=0,
                pretrained_cfg_overlay={"file": str(path)} if path else None,
                **kwargs,
            )
    except RuntimeError as exc:  # timm's strict load_state_dict
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"{path or repo} does not fit {arch} (model {cfg.name}): {exc}") from exc
    return model, path


def _read_sharded(path: Path, shard_path: Callable[[str], Path]) -> dict[str, torch.Tensor]:
    """:func:`_read_file`, or the union of the shards that a ``*.index.json`` names."""
    if not path.name.endswith(".index.json"):
        return _read_file(path)
    import json

    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except Exception as exc:
        raise WeightsError(f"cannot read the shard index {path}: {exc}") from exc
    out: dict[str, torch.Tensor] = {}
    for name in shards:
        out.update(_read_file(shard_path(name)))
    return out


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, safely: safetensors, or a torch pickle with ``weights_only=True``.

    Unwraps ``state_dict``/``model`` wrappers and a DDP ``module.`` prefix, as upstream loaders do.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
