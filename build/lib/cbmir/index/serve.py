"""Command line: ``python -m cbmir.serve DIR``: a local web page to search an index with an image.

One FastAPI app (:func:`create_app`) around a :class:`cbmir.index.retrieve.Retriever`: the page
(``cbmir/resources/search.html``, plain HTML + JS), the index's description, a query by upload,
and the items' thumbnails and full-size pixels by integer row only, rendered from the index's
own arrays, so no request can name a file and nothing outside the index folder is ever served.
Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from cbmir.data.decode import DICOM_SUFFIXES, NIFTI_SUFFIXES, PILLOW_SUFFIXES, BadFile
from cbmir.errors import CbmirError
from cbmir.index.retrieve import Retriever, upload_name

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parents[1] / "resources" / "search.html"
DEFAULT_MAX_UPLOAD_MB = 20.0
MAX_K = 50
#: Room for the multipart envelope around the file, on top of the upload limit.
ENVELOPE = 64 * 1024


def png(pixels: np.ndarray, *, volume: bool = False) -> bytes:
    """An item (or a volume's middle slice) as PNG bytes."""
    from PIL import Image

    from cbmir.report.gallery import display_image

    buffer = io.BytesIO()
    Image.fromarray(display_image(pixels, volume=volume)).save(buffer, format="PNG")
    return buffer.getvalue()


def accepted_suffixes(manifest: dict[str, Any]) -> tuple[str, ...]:
    """2D indexes take PNG/JPEG/TIFF/BMP and DICOM; 3D indexes NIfTI and multi-frame DICOM."""
    return NIFTI_SUFFIXES + DICOM_SUFFIXES if manifest["decode"]["dims"] == 3 else PILLOW_SUFFIXES + DICOM_SUFFIXES


def create_app(retriever: Retriever, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, k: int = 5) -> FastAPI:
    """The app: the page, ``/api/info``, ``/api/query`` (multipart ``file``, ``k``), thumbnails and images by row."""
    index, manifest = retriever.index, retriever.manifest
    limit = int(max_upload_mb * 1024 * 1024)
    volume = manifest["decode"]["dims"] == 3
    suffixes = accepted_suffixes(manifest)
    app = FastAPI(title="cbmir search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # before the multipart parser spools anything: a declared body larger than the limit is refused at once
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + ENVELOPE:
            return JSONResponse({"detail": too_large(int(declared))}, status_code=413)
        return await call_next(request)

    def too_large(size: int) -> str:
        return f"the file is too large ({size / 1e6:.1f} MB); the limit is {max_upload_mb:g} MB"

    def item_row(row: int) -> int:
        if not 0 <= row < len(index):
            raise HTTPException(404, f"no item {row}: this index has items 0 to {len(index) - 1}")
        return row

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        keys = ("model", "model_label", "dataset", "dataset_label", "size", "metric", "n_items", "splits", "protocol")
        return {
            **{key: manifest[key] for key in keys},
            "k": k,
            "max_k": MAX_K,
            "max_upload_mb": max_upload_mb,
            "accepted": list(suffixes),
            "full_size": index.images is not None,
            "evaluation": manifest["evaluation"],
        }

    @app.post("/api/query")
    def query(file: UploadFile = File(...), k: int = Form(k)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, too_large(len(data)))
        name = Path(file.filename or "upload").name
        try:
            typed = upload_name(name, data)
            if not typed.lower().endswith(suffixes):
                raise BadFile(f"a {Path(typed).suffix} file; this index takes {', '.join(suffixes)}")
            answer = retriever.query(typed, data, max(1, min(int(k), MAX_K)))
        except BadFile as exc:
            raise HTTPException(400, f"{name} cannot be searched: {exc}") from None
        body = answer.as_dict()
        body["query"] = name
        body["image"] = "data:image/png;base64," + base64.b64encode(png(answer.pixels, volume=volume)).decode()
        return body

    @app.get("/api/thumb/{row}")
    def thumb(row: int) -> Response:
        return Response(png(index.thumbs[item_row(row)]), media_type="image/png")

    @app.get("/api/image/{row}")
    def image(row: int) -> Response:
        source = index.images if index.images is not None else index.thumbs
        pixels = source[item_row(row)]
        return Response(png(pixels, volume=volume and index.images is not None), media_type="image/png")

    @app.get("/api/item/{row}")
    def item(row: int) -> dict[str, Any]:
        return {"row": row, **retriever.item(item_row(row))}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cbmir serve", description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="an index folder (python -m cbmir.index build)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("-k", type=int, default=5, help="neighbours shown (default 5)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    parser.add_argument("--device", help="torch device for the query model (default: cuda if available, else cpu)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index's files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[cbmir] %(message)s")
    try:
        retriever = Retriever(args.index, check=not args.no_verify, device=args.device)
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    m = retriever.manifest
    log.info("serving %s (%s · %s · %d items) on http://%s:%d/", args.index, m["model"], m["dataset"], m["n_items"],
             args.host, args.port)  # fmt: skip
    uvicorn.run(create_app(retriever, max_upload_mb=args.max_upload_mb, k=args.k), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
