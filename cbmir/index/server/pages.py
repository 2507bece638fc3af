"""The HTML the server sends: the search page (with the hash its inline script is allowed by) and the login form."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import cache
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "resources" / "search.html"
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


@cache
def search_page() -> str:
    return PAGE.read_text(encoding="utf-8")


def script_hash(page: str) -> str:
    """The CSP source (``sha256-…``) of the page's one inline script: no other script can run on it."""
    found = SCRIPT.search(page)
    body = found.group(1) if found else ""
    return "sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()


def login_page(message: str = "This search server asks for a token.") -> str:
    """A form with no script: the token is posted to /login, which sets an HttpOnly cookie."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cbmir search · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body {{ font: 14px/1.4 system-ui, sans-serif; margin: 40px; color: #1d2330; }}
input {{ font: inherit; padding: 4px; width: 28em; }}</style></head>
<body><h1>cbmir search</h1><p id="message">{html.escape(message)}</p>
<form method="post" action="/login"><label>token <input type="password" name="token" id="token"
 autocomplete="current-password" required></label> <button type="submit">sign in</button></form>
</body></html>"""
