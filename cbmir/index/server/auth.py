"""Who may query: the token file (one ``name:token`` per user), read again whenever it changes or on SIGHUP.

Format (settled in the design): UTF-8, one ``name:token`` per line, ``#`` comments and blank lines ignored, a line
with only a token named ``token-<line>``. The file must be private to its owner (no group or other permission bits):
a token file others can read is a shared password. Tokens are compared in constant time (``hmac.compare_digest``,
every token, no early exit). A request presents its token as ``Authorization: Bearer <token>`` or, from the page,
as the HttpOnly cookie that ``POST /login`` sets. Removing a line revokes that user at the next request.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
import threading
from pathlib import Path

from cbmir.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE = "cbmir_token"
#: Shorter tokens can be guessed by a patient attacker; `python -c "import secrets; print(secrets.token_urlsafe())"`.
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_tokens(text: str, path: Path) -> dict[str, str]:
    """``{name: token}`` from the file's text; a ConfigError names the first bad line."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = (name.strip(), token.strip()) if sep else (f"token-{number}", line)
        if not name:
            raise ConfigError(f"{path} line {number}: a name before ':' is empty")
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{path} line {number}: the token of {name} is shorter than {MIN_TOKEN_CHARS} characters")
        if name in tokens:
            raise ConfigError(f"{path} line {number}: {name} appears twice")
        tokens[name] = token
    if not tokens:
        raise ConfigError(f"{path} holds no token (one `name:token` per line)")
    return tokens


def read_token_file(path: Path) -> dict[str, str]:
    """The tokens of a private file; a ConfigError when it is missing, shared with others, or malformed."""
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path} can be read or changed by other users (mode {stat.filemode(info.st_mode)}); "
                f"make it private: chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"the token file {path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not UTF-8 text") from None
    return parse_tokens(text, path)


class TokenFile:
    """The users allowed in, kept in step with the file: a change of its mtime, size or inode reloads it.

    A reload that fails (file removed, made readable by others, malformed) lets nobody in until it is fixed, and
    says so in one log line: failing closed is the only safe reading of a broken access list.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._tokens = read_token_file(self.path)  # at start, a bad file is an error, not a closed door

    def _stat(self) -> tuple | None:
        try:
            s = os.stat(self.path)
        except OSError:
            return None
        return (s.st_mtime_ns, s.st_size, s.st_ino, s.st_mode)

    def reload(self, *, force: bool = False) -> None:
        """Re-read the file when it changed (or always, with ``force``: SIGHUP)."""
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return
        with self._lock:
            try:
                tokens = read_token_file(self.path)
            except ConfigError as exc:
                log.error("token file not reloaded, nobody is let in until it is fixed: %s", exc)
                tokens = {}
            else:
                log.info("token file %s reloaded: %d users", self.path, len(tokens))
            self._tokens, self._stamp = tokens, stamp

    def user(self, presented: str | None) -> str | None:
        """The name whose token ``presented`` is, or None; every token is compared, in constant time."""
        self.reload()
        if not presented:
            return None
        candidate = presented.encode("utf-8", "replace")
        found = None
        for name, token in self._tokens.items():
            if hmac.compare_digest(candidate, token.encode("utf-8")):
                found = name
        return found

    @property
    def users(self) -> list[str]:
        return sorted(self._tokens)


def presented_token(headers, cookies) -> str | None:
    """The bearer token of ``Authorization``, else the page's cookie."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return cookies.get(COOKIE) or None
