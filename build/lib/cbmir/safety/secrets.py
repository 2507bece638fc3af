"""Keep secrets out of what a run writes: result.json, saved configs (.hydra/*.yaml), CSV and W&B.

Secrets are the values of environment variables named like a credential (HF_TOKEN, WANDB_API_KEY:
names ending in TOKEN, KEY, SECRET, PASSWORD or CREDENTIALS), strings that look like a token
(``hf_...``, ``ghp_...``, ``sk-...``), and any config value under a key named like a credential
(``hub_token``, ``api_key``; not ``reg_tokens``).
They are replaced by ``<redacted>`` wherever cbmir records a configuration.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

REDACTED = "<redacted>"
SECRET_ENV = re.compile(r"(?i)(token|key|secret|passw(or)?d|credentials?)$")
SECRET_KEY = re.compile(r"(?i)(token|api_?key|secret|passw(or)?d|credentials?)$")
TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|sk-[A-Za-z0-9_-]{20,})")
#: ``key: value`` (YAML) or ``key=value`` (an override) under a secret-looking key.
_ASSIGNMENT = re.compile(r"(?im)([\w.+~-]*(?:token|api_?key|secret|passw(?:or)?d|credentials?)\s*[:=]\s*)(\S.*)$")


def secret_values() -> list[str]:
    """Values of credential-named environment variables (long enough not to be a flag like ``1``)."""
    return sorted({v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, REDACTED)
    text = TOKEN_LIKE.sub(REDACTED, text)
    return _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)


def redact(obj: Any) -> Any:
    """``obj`` (plain dicts, lists, strings) with every secret replaced by ``<redacted>``."""
    if isinstance(obj, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) and v else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


@contextmanager
def redacted_argv() -> Iterator[None]:
    """The command line without secrets while a library records it (W&B's run metadata keeps ``sys.argv``)."""
    saved = sys.argv[:]
    sys.argv[:] = [redact_text(arg) for arg in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


class RedactSavedConfig(Callback):
    """Hydra saves the composed config and the overrides before a job starts; redact those files in place."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:
            return
        for path in (Path(config.hydra.runtime.output_dir) / subdir).glob("*.yaml"):
            text = path.read_text()
            if (clean := redact_text(text)) != text:
                path.write_text(clean)
