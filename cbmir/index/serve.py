"""Command line: ``cbmir serve DIR``: the search page and API of an index, for this machine or a group.

Binds 127.0.0.1 unless told otherwise; any other address needs an access method (``--token-file`` or, explicitly,
``--insecure-no-auth``). The app is :func:`cbmir.index.server.app.create_app`; this module parses the options,
checks them before anything heavy is loaded, opens the index, and runs uvicorn (TLS through its own options).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from cbmir.errors import CbmirError, ConfigError
from cbmir.index.server.app import ServeOptions, accepted_suffixes, create_app, png
from cbmir.index.server.auth import is_loopback, read_token_file
from cbmir.index.server.live import Served

__all__ = ["accepted_suffixes", "create_app", "main", "png", "parser", "check_options"]
log = logging.getLogger(__name__)
DEFAULTS = ServeOptions()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbmir serve", description=__doc__.splitlines()[0])
    p.add_argument("index", type=Path, help="an index folder (cbmir index build)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("-k", type=int, default=DEFAULTS.k, help="neighbours shown (default 5)")
    p.add_argument("--device", help="torch device for the query model (default: cuda if available, else cpu)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index's files")
    p.add_argument("--no-text", action="store_true", help="no search by words, even for a vision-language index")
    g = p.add_argument_group("untrusted uploads")
    g.add_argument("--max-upload-mb", type=float, default=DEFAULTS.max_upload_mb, help="largest upload (20)")
    g.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels, help="largest 2D image decoded (40 Mpx)")
    g.add_argument("--max-voxels", type=int, default=DEFAULTS.max_voxels, help="largest volume decoded (64 Mvoxels)")
    g.add_argument("--workers", type=int, default=DEFAULTS.workers, help="queries decoded at once (the cores)")
    g.add_argument("--queue", type=int, default=DEFAULTS.queue, help="queries waiting for a worker; then 503 (8)")
    a = p.add_argument_group("access")
    a.add_argument("--token-file", type=Path, help="one `name:token` per line, private to its owner (chmod 600)")
    a.add_argument("--insecure-no-auth", action="store_true", help="serve another address without any token")
    a.add_argument("--audit-log", type=Path, help="append one JSON line per request to this file (default: none)")
    a.add_argument("--request-rate", default=DEFAULTS.request_rate, help="per user, every route (600/minute)")
    a.add_argument("--query-rate", default=DEFAULTS.query_rate, help="per user, queries (60/minute)")
    a.add_argument("--user-queries", type=int, default=DEFAULTS.user_queries, help="per user, at once (2)")
    a.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate (PEM)")
    a.add_argument("--ssl-keyfile", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--reload-interval", type=float, default=10.0, help="seconds between looks at CURRENT (10)")
    return p


def check_options(args: argparse.Namespace) -> ServeOptions:
    """Every option checked before the index and the model are loaded; a ConfigError says what to change."""
    if args.token_file is not None and args.insecure_no_auth:
        raise ConfigError("--token-file and --insecure-no-auth exclude each other; choose one")
    if not is_loopback(args.host) and args.token_file is None and not args.insecure_no_auth:
        raise ConfigError(
            f"--host {args.host} lets other machines in: give --token-file FILE (one name:token per line), "
            "or --insecure-no-auth to serve every case to anyone who reaches the port"
        )
    if args.token_file is not None:
        read_token_file(args.token_file)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} does not exist")
    positive = {
        "-k": args.k, "--max-upload-mb": args.max_upload_mb, "--max-pixels": args.max_pixels,
        "--max-voxels": args.max_voxels, "--workers": args.workers, "--reload-interval": args.reload_interval,
    }  # fmt: skip
    for flag, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{flag} must be positive (got {value})")
    if args.queue < 0:
        raise ConfigError(f"--queue must be 0 or more (got {args.queue})")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535 (got {args.port})")
    return ServeOptions(
        k=args.k,
        max_upload_mb=args.max_upload_mb,
        workers=args.workers,
        queue=args.queue,
        max_pixels=args.max_pixels,
        max_voxels=args.max_voxels,
        request_rate=args.request_rate,
        query_rate=args.query_rate,
        user_queries=args.user_queries,
        token_file=args.token_file,
        insecure_no_auth=args.insecure_no_auth,
        audit_log=args.audit_log,
        secure_cookie=args.ssl_certfile is not None,
    )


def open_served(folder: Path, *, check: bool, device: str | None, text: bool = True) -> Served:
    """One generation opened for serving: the image retriever, and the text retriever over the same files when the
    index holds joint image-text vectors (vision-language models) and ``text`` is on."""
    from cbmir.index.retrieve import Retriever
    from cbmir.index.text_query import TextRetriever, text_missing

    retriever = Retriever(folder, check=check, device=device)
    if not text:
        return Served(retriever, None, None, "this server was started with --no-text")
    missing = text_missing(retriever.index)
    if missing is not None:
        return Served(retriever, None, None, f"this index cannot answer text queries: {missing}")
    return Served(retriever, None, TextRetriever(retriever.index, device=device), None)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[cbmir] %(message)s")
    try:
        options = check_options(args)
        from cbmir.index.server.live import Live, pointer

        def opener(folder: Path) -> Served:
            return open_served(folder, check=not args.no_verify, device=args.device, text=not args.no_text)

        root = args.index.expanduser().resolve()
        first = opener(root)
        retriever = first.retriever
        first = replace(first, generation=getattr(retriever.index, "generation", None) or pointer(root))
        live = Live(first, root=root, opener=opener, interval=args.reload_interval)
        app = create_app(live, options)
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    tokens = app.state.tokens
    live.on_hup = (lambda: tokens.reload(force=True)) if tokens is not None else None
    live.start()
    signal.signal(signal.SIGHUP, lambda *_: live.hup())
    import uvicorn

    m = retriever.manifest
    scheme = "https" if args.ssl_certfile else "http"
    log.info("serving %s (%s · %s · %d items) on %s://%s:%d/ (pid %d)", args.index, m["model"], m["dataset"],
             len(retriever.index), scheme, args.host, args.port, os.getpid())  # fmt: skip
    try:
        uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                    log_level="warning")  # fmt: skip
    finally:
        live.stop()
        if app.state.audit is not None:
            app.state.audit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
