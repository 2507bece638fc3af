"""The FastAPI app: the page, the index's description, a query by upload, items by row, login and logout.

Images are served by integer row only (``/api/thumb/{row}``, ``/api/image/{row}``), rendered from the index's own
arrays, so no request can name a file and nothing outside the index folder is ever served. A query is admitted
(user limits, then a place in the pool) before its body is read, read as it arrives (:mod:`.upload`), then decoded,
embedded and searched in the pool's threads. Every refusal is a 4xx with one sentence.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from cbmir.data.decode import DICOM_SUFFIXES, NIFTI_SUFFIXES, PILLOW_SUFFIXES, BadFile
from cbmir.errors import CbmirError
from cbmir.index.files import BrokenIndexError
from cbmir.index.retrieve import FILTER_COLUMNS, Retriever, parse_where, upload_name
from cbmir.index.server.audit import AuditLog
from cbmir.index.server.auth import COOKIE, TokenFile
from cbmir.index.server.gate import ANONYMOUS, Gate
from cbmir.index.server.live import Live, Served
from cbmir.index.server.pages import login_page, script_hash, search_page
from cbmir.index.server.pool import WorkPool
from cbmir.index.server.quota import Quota
from cbmir.index.server.upload import Upload, read_upload

log = logging.getLogger(__name__)
MAX_K = 50
QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "an image or volume file"},
                        "text": {"type": "string", "description": "words (vision-language indexes; see /api/info)"},
                        "text_weight": {"type": "number", "minimum": 0, "maximum": 1, "description": "beside a file"},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                        "where": {"type": "array", "items": {"type": "string"}, "description": "`label=benign`"},
                    },
                }
            }
        },
    }
}


@dataclass(frozen=True)
class ServeOptions:
    """Every knob of the server (``cbmir serve --help`` names them); defaults suit one research group on 2 cores."""

    k: int = 5
    max_upload_mb: float = 20.0
    workers: int = os.cpu_count() or 1
    queue: int = 8
    max_pixels: int = 40_000_000
    max_voxels: int = 64_000_000
    request_rate: str = "600/minute"
    query_rate: str = "60/minute"
    user_queries: int = 2
    token_file: Path | None = None
    insecure_no_auth: bool = False
    audit_log: Path | None = None
    secure_cookie: bool = False


def png(pixels: np.ndarray, *, volume: bool = False) -> bytes:
    """An item (or a volume's middle slice) as PNG bytes."""
    from PIL import Image

    from cbmir.report.gallery import display_image

    buffer = io.BytesIO()
    Image.fromarray(display_image(np.asarray(pixels), volume=volume)).save(buffer, format="PNG")
    return buffer.getvalue()


def accepted_suffixes(manifest: dict[str, Any]) -> tuple[str, ...]:
    """2D indexes take PNG/JPEG/TIFF/BMP and DICOM; 3D indexes NIfTI and multi-frame DICOM."""
    return NIFTI_SUFFIXES + DICOM_SUFFIXES if manifest["decode"]["dims"] == 3 else PILLOW_SUFFIXES + DICOM_SUFFIXES


def decode_limits(options: ServeOptions) -> Any:
    """The server's own caps for :func:`cbmir.data.decode.decode` (smaller than ingestion's)."""
    from cbmir.data.decode import DecodeLimits

    return DecodeLimits(max_pixels=options.max_pixels, max_voxels=options.max_voxels)


def query_fields(fields: dict[str, list[str]], default_k: int) -> tuple[int, dict[str, list[str]]]:
    """``k`` (1…50) and the ``where`` filters (``column=value``, repeated) of a query form."""
    raw_k = (fields.get("k") or [str(default_k)])[-1].strip()
    if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_K:
        raise HTTPException(400, f"k must be a whole number from 1 to {MAX_K} (got {raw_k[:20]!r})")
    try:
        return int(raw_k), parse_where(fields.get("where", []))
    except CbmirError as exc:
        raise HTTPException(400, str(exc)) from None


def text_fields(fields: dict[str, list[str]]) -> tuple[str, float]:
    """The ``text`` of a query by words ("" for an image query) and its ``text_weight`` beside a file (0…1)."""
    words = (fields.get("text") or [""])[-1].strip()
    raw = (fields.get("text_weight") or ["0.5"])[-1].strip()
    try:
        weight = float(raw)
    except ValueError:
        weight = -1.0
    if not 0.0 <= weight <= 1.0:
        raise HTTPException(400, f"text_weight must be a number from 0 to 1 (got {raw[:20]!r})")
    return words, weight


def create_app(source: Retriever | Live, options: ServeOptions | None = None, **overrides: Any) -> FastAPI:
    """The app around a retriever (served as is) or a :class:`Live` index (following its generations)."""
    opts = replace(options or ServeOptions(), **overrides)
    live = source if isinstance(source, Live) else Live.fixed(source)
    tokens = TokenFile(opts.token_file) if opts.token_file is not None else None
    quota = Quota(request_rate=opts.request_rate, query_rate=opts.query_rate, user_queries=opts.user_queries)
    pool = WorkPool(opts.workers, opts.queue)
    limits = decode_limits(opts)
    audit = AuditLog(opts.audit_log) if opts.audit_log is not None else None
    page = search_page()
    app = FastAPI(title="cbmir search", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(Gate, tokens=tokens, quota=quota, audit=audit, script_hash=script_hash(page))
    app.state.live, app.state.tokens, app.state.audit = live, tokens, audit

    @app.exception_handler(BrokenIndexError)
    async def broken_index(request: Request, exc: BrokenIndexError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, str(exc).splitlines()[0])
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=503)

    def item_row(served: Served, row: int) -> int:
        n = len(served.index)
        if not 0 <= row < n:
            raise HTTPException(404, f"no item {row}: this index has items 0 to {n - 1}")
        return row

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.post("/login")
    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 4096:
                raise HTTPException(413, "a login form is a token, not more than 4 KB")
        token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
        if tokens is None or tokens.user(token) is None:
            return HTMLResponse(login_page("That token is not valid here."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=opts.secure_cookie, path="/")
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/info")
    def info(request: Request) -> dict[str, Any]:
        served = live.current
        manifest = served.manifest
        keys = ("model", "model_label", "dataset", "dataset_label", "size", "metric", "n_items", "splits", "protocol")
        return {
            **{key: manifest.get(key) for key in keys},
            "n_items": len(served.index),
            "generation": served.generation,
            "privacy": (manifest.get("privacy") or {"mode": "plain"})["mode"],  # never the key file's path
            "k": opts.k,
            "max_k": MAX_K,
            "max_upload_mb": opts.max_upload_mb,
            "accepted": list(accepted_suffixes(manifest)),
            "full_size": served.index.images is not None,
            "filters": list(FILTER_COLUMNS),
            "text": served.text is not None,
            "text_missing": served.text_missing,
            "evaluation": manifest.get("evaluation"),
            "user": request.state.user,
            "access": "token" if tokens is not None else ("open" if opts.insecure_no_auth else "loopback"),
        }

    def run_query(served: Served, upload: Upload, k: int, where: dict[str, list[str]]) -> dict[str, Any]:
        """Decode, embed, search (in a pool thread): every problem with the file or the words is a 400 sentence."""
        manifest, name = served.manifest, Path(upload.filename or "upload").name
        suffixes = accepted_suffixes(manifest)
        words, weight = text_fields(upload.fields)
        if not words and not upload.filename:
            raise HTTPException(400, "no file: send the image in the form field `file` (or words in `text`)")
        if words and served.text is None:
            raise HTTPException(400, f"no search by words here: {served.text_missing}")
        what = name if not words else (words if not upload.filename else f"{words} + {name}")
        try:
            typed = None
            if upload.filename:
                typed = upload_name(name, upload.data)
                if not typed.lower().endswith(suffixes):
                    raise BadFile(f"a {Path(typed).suffix} file; this index takes {', '.join(suffixes)}")
            if words:
                image = None if typed is None else (typed, upload.data)
                answer = served.text.ask(words, k, image=image, text_weight=weight, where=where or None, limits=limits)
            else:
                answer = served.retriever.query(typed, upload.data, k, where or None, limits=limits)
        except (BadFile, CbmirError) as exc:
            raise HTTPException(400, f"{what[:200]} cannot be searched: {str(exc).splitlines()[0]}") from None
        body = answer.as_dict()
        body["query"] = what
        body["by"] = "text" if words else "image"
        volume = manifest["decode"]["dims"] == 3
        shown = upload.filename and (not words or weight < 1.0)
        body["image"] = (
            "data:image/png;base64," + base64.b64encode(png(answer.pixels, volume=volume)).decode() if shown else None
        )
        return body

    @app.post("/api/query", openapi_extra=QUERY_BODY)
    async def query(request: Request) -> dict[str, Any]:
        served = live.current  # this request's generation, whatever is swapped in meanwhile
        async with quota.query(request.state.user or ANONYMOUS), pool.place():
            upload = await read_upload(request, opts.max_upload_mb, file_optional=True)
            k, where = query_fields(upload.fields, opts.k)
            body = await pool.run(run_query, served, upload, k, where)
        request.state.audit_rows = [n["row"] for n in body["neighbours"]]
        return body

    @app.get("/api/thumb/{row}")
    def thumb(request: Request, row: int) -> Response:
        served = live.current
        request.state.audit_rows = [row]
        return Response(png(served.index.thumbs[item_row(served, row)]), media_type="image/png")

    @app.get("/api/image/{row}")
    def image(request: Request, row: int) -> Response:
        served = live.current
        request.state.audit_rows = [row]
        images = served.index.images
        pixels = (images if images is not None else served.index.thumbs)[item_row(served, row)]
        volume = served.manifest["decode"]["dims"] == 3 and images is not None
        return Response(png(pixels, volume=volume), media_type="image/png")

    @app.get("/api/item/{row}")
    def item(request: Request, row: int) -> dict[str, Any]:
        served = live.current
        request.state.audit_rows = [row]
        return {"row": row, **served.retriever.item(item_row(served, row))}

    return app
