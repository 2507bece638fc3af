"""The door every request passes: who it is (token), whether it may (rate), what it gets back (headers), the record.

A pure ASGI middleware, so the request body is never read here (uploads stay streamed). Without a valid token every
route answers 401: JSON for the API, the login form for a browser's page. ``POST /login`` is the one route that
takes a token in a form, checks it itself, and answers 401 on a wrong one. Every response gets the security headers
(content security policy, nosniff, no framing, no referrer) and no CORS header: the API is for this origin only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbmir.index.server.audit import AuditLog
from cbmir.index.server.auth import TokenFile, presented_token
from cbmir.index.server.pages import login_page
from cbmir.index.server.quota import Quota

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"
BASE_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
}
#: Everything from this origin only; no framing; the page's inline script allowed by its hash (see pages.py).
STRICT_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; " \
             "form-action 'self'; frame-ancestors 'none'; object-src 'none'"  # fmt: skip
#: FastAPI's /docs page loads Swagger UI from its CDN.
DOCS_CSP = "default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; " \
           "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; " \
           "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; frame-ancestors 'none'"  # fmt: skip


class Gate:
    """Authentication, the per-user request rate, security headers and the audit line, around the app."""

    def __init__(self, app: ASGIApp, *, tokens: TokenFile | None, quota: Quota, audit: AuditLog | None,
                 script_hash: str):  # fmt: skip
        self.app, self.tokens, self.quota, self.audit = app, tokens, quota, audit
        self.page_csp = f"{STRICT_CSP}; script-src '{script_hash}'"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope)
        state = scope.setdefault("state", {})
        path, method = scope["path"], scope["method"]
        status: dict[str, Any] = {"code": 500, "started": False}
        csp = DOCS_CSP if path in ("/docs", "/docs/oauth2-redirect") else self.page_csp

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                headers = MutableHeaders(scope=message)
                for key, value in BASE_HEADERS.items():
                    headers[key] = value
                headers["content-security-policy"] = csp
            await send(message)

        user: str | None = ANONYMOUS if self.tokens is None else None
        try:
            if self.tokens is not None:
                user = self.tokens.user(presented_token(request.headers, request.cookies))
                if user is None and not (path == "/login" and method == "POST"):
                    await self._unauthorised(request, send_with_headers)
                    return
            state["user"] = user
            try:
                # a caller without a valid token (only POST /login gets this far) is counted by its address
                client = scope.get("client")
                self.quota.request(user or f"address {client[0] if client else '-'}")
            except HTTPException as exc:
                await _json(send_with_headers, exc.status_code, exc.detail, exc.headers)
                return
            try:
                await self.app(scope, receive, send_with_headers)
            except Exception as exc:  # noqa: BLE001 (the catch-all: one sentence, one log line, no traceback)
                log.error("internal error on %s %s: %s: %s", method, path, type(exc).__name__, str(exc)[:200])
                if not status["started"]:
                    await _json(send_with_headers, 500, "the server failed on this request; the error is in its log")
        finally:
            if self.audit is not None:
                client = scope.get("client")
                self.audit.write(
                    user=user,
                    client=f"{client[0]}:{client[1]}" if client else "-",
                    method=method,
                    route=path,
                    status=status["code"],
                    rows=state.get("audit_rows"),
                    ms=1000 * (time.perf_counter() - started),
                )

    async def _unauthorised(self, request: Request, send: Send) -> None:
        """401: the login form for a browser asking for the page, one JSON sentence for everything else."""
        challenge = {"www-authenticate": 'Bearer realm="cbmir"'}
        if request.url.path == "/" and "text/html" in Headers(scope=request.scope).get("accept", ""):
            body = login_page().encode()
            await _send(send, 401, body, "text/html; charset=utf-8", challenge)
        else:
            await _json(send, 401, "this server needs a token: send `Authorization: Bearer <token>`", challenge)


async def _json(send: Send, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), "application/json", headers)


async def _send(send: Send, status: int, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
