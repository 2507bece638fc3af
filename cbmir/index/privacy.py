"""What an index may say about where its items came from: ``index.privacy`` = pseudonymous | plain | none.

An index folder is something people copy to colleagues and servers, and source paths and groups
are very often patient names or IDs (``Doe^John/…``, a PatientID). By default (``pseudonymous``)
each is stored as a keyed pseudonym, HMAC-SHA-256 under a secret key kept outside the index folder
(``index.key_file``, created owner-only on first use): the same patient gets the same pseudonym in
every build and add made with that key, and nobody without the key can test a guess. ``plain`` keeps
the values as they are; ``none`` keeps neither (sources and groups are empty).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cbmir.errors import ConfigError

MODES = ("pseudonymous", "plain", "none")
KEY_BYTES = 32
#: Prefixes say what a pseudonym stands for (and that it is one).
SOURCE_PREFIX, GROUP_PREFIX = "src-", "grp-"
HEX = 24  # 96 bits of the HMAC: collisions need ~2^48 items


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"index.privacy must be one of {list(MODES)}, got {mode!r}")
    return mode


def load_key(path: Path, *, create: bool) -> bytes:
    """The key in ``path`` (created with mode 0600 when ``create`` and missing); refused if others may read it."""
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise ConfigError(
                f"the index's pseudonym key {path} is missing; give the key file it was built with (--key-file)"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} (the pseudonym key) is readable by others; chmod 600 {path}")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a cbmir pseudonym key ({exc})") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: a pseudonym key needs at least 16 bytes (64 hex digits are written)")
    return key


@dataclass(frozen=True)
class Privacy:
    """How sources and groups are written: the mode and (pseudonymous) the key."""

    mode: str
    key: bytes | None = None

    @property
    def key_id(self) -> str | None:
        """A public fingerprint of the key: says which key an index needs without revealing it."""
        return self._mac("key-id", "cbmir") if self.key is not None else None

    def _mac(self, kind: str, value: str) -> str:
        assert self.key is not None
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:HEX]

    def source(self, value: str) -> str:
        if self.mode == "plain":
            return value
        if self.mode == "none" or not value:
            return ""
        return SOURCE_PREFIX + self._mac("source", value)

    def group(self, value: str) -> str:
        if self.mode == "plain":
            return value
        if self.mode == "none" or not value:
            return ""
        return GROUP_PREFIX + self._mac("group", value)

    def record(self, key_file: Path | None) -> dict:
        """The manifest's ``privacy`` block (no secret in it)."""
        return {"mode": self.mode, "key_id": self.key_id, "key_file": str(key_file) if self.key else None}


def privacy_for_build(mode: str, key_file: str | None, index_dir: Path) -> tuple[Privacy, Path | None]:
    """The build's privacy from ``index.privacy`` and ``index.key_file``; the key must live outside the index."""
    mode = _check_mode(str(mode))
    if mode != "pseudonymous":
        return Privacy(mode), None
    if not key_file:
        raise ConfigError("index.privacy=pseudonymous needs index.key_file (where the pseudonym key is kept)")
    path = Path(str(key_file)).expanduser().resolve()
    index_dir = Path(index_dir).expanduser().resolve()
    if path == index_dir or index_dir in path.parents:
        raise ConfigError(f"index.key_file={path} lies inside the index folder {index_dir}; keep the key outside it")
    return Privacy(mode, load_key(path, create=True)), path


def privacy_of(manifest: dict, key_file: str | Path | None = None, *, need_key: bool = True) -> Privacy:
    """The privacy an existing index was built with; its key (``key_file`` or the manifest's) checked against it."""
    block = manifest.get("privacy") or {"mode": "plain"}  # indexes from before privacy kept plain values
    mode = block["mode"]
    if mode != "pseudonymous":
        return Privacy(mode)
    path = key_file or block.get("key_file")
    if not path or not Path(path).expanduser().exists():
        if not need_key:
            return Privacy(mode)
        raise ConfigError(
            f"this index stores pseudonyms; its key ({path or 'unknown'}) is not here: give it with --key-file"
        )
    privacy = Privacy(mode, load_key(Path(path), create=False))
    if block.get("key_id") and privacy.key_id != block["key_id"]:
        raise ConfigError(f"{path} is not the key this index was built with (its key id is {block['key_id']})")
    return privacy
