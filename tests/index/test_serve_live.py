"""The server running for real (uvicorn on 127.0.0.1 in a thread): generation switches, truncation, TLS."""

from __future__ import annotations

import logging
import shutil
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from cbmir.index.generations import POINTER, current_name
from cbmir.index.retrieve import Retriever
from cbmir.index.server.app import create_app
from cbmir.index.server.live import Live, Served
from tests.helpers.serve_fixtures import png_bytes, running_server


@pytest.fixture(scope="module")
def built(tiny_index) -> Path:
    return tiny_index("dataset=breastmnist", "size=28")


@pytest.fixture
def index_copy(built, tmp_path) -> Path:
    """A private copy of the index folder (generation g000001 behind CURRENT): tests change it."""
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    assert current_name(copy) == "g000001"
    return copy


def wait_for(predicate, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_running_server_switches_generation_without_a_restart(index_copy, caplog):
    def opener(root: Path) -> Retriever:
        return Retriever(root, device="cpu")

    live = Live(Served(opener(index_copy), "g000001"), root=index_copy, opener=opener, interval=0.2)
    app = create_app(live)
    live.start()
    try:
        with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/api/info").json()["generation"] == "g000001"
            # a half-written generation named by the pointer: the old one keeps being served, one log line says why
            broken = index_copy / "g000002"
            shutil.copytree(index_copy / "g000001", broken)
            (broken / "manifest.json").write_text("{ half written")
            with caplog.at_level(logging.ERROR, logger="cbmir.index.server.live"):
                (index_copy / POINTER).write_text("g000002\n")
                assert wait_for(lambda: any("generation g000002 not served" in r.message for r in caplog.records))
            assert client.get("/api/info").json()["generation"] == "g000001"
            assert client.get("/api/thumb/3").status_code == 200
            # a complete one (here: a copy of the first, 'gen 3') is swapped in while the server runs; a query in
            # flight on g000001 at the switch finishes there
            old = live.current.retriever
            entered, release = threading.Event(), threading.Event()
            original = old.query

            def held_query(*args, **kwargs):
                entered.set()
                release.wait(30)
                return original(*args, **kwargs)

            old.query = held_query
            in_flight = ThreadPoolExecutor(1).submit(
                client.post, "/api/query", files={"file": ("q.png", png_bytes(old.index.images[9]))}
            )
            assert entered.wait(30)
            shutil.copytree(index_copy / "g000001", index_copy / "g000003")
            (index_copy / POINTER).write_text("g000003\n")
            assert wait_for(lambda: client.get("/api/info").json()["generation"] == "g000003")
            assert live.current.retriever is not old
            release.set()
            answer = in_flight.result(timeout=60)
            assert answer.status_code == 200 and answer.json()["neighbours"][0]["row"] == 9
            body = png_bytes(live.current.index.images[5])
            answer = client.post("/api/query", files={"file": ("q.png", body)})
            assert answer.status_code == 200 and answer.json()["neighbours"][0]["row"] == 5
            # SIGHUP's path: a pointer back to the first generation is taken at once, without waiting for the poll
            live.interval = 3600
            (index_copy / POINTER).write_text("g000001\n")
            live.hup()
            assert wait_for(lambda: client.get("/api/info").json()["generation"] == "g000001", timeout=20)
    finally:
        live.stop()


def test_truncating_thumbs_under_a_running_server_is_a_503_not_a_crash(index_copy):
    retriever = Retriever(index_copy, check=False, device="cpu")
    with running_server(create_app(retriever)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/api/thumb/20").status_code == 200
        thumbs = index_copy / "g000001" / "thumbs.npy"
        with open(thumbs, "r+b") as fh:
            fh.truncate(thumbs.stat().st_size // 2)
        response = client.get("/api/thumb/20")
        assert response.status_code == 503
        assert "thumbs.npy was truncated after the index was opened" in response.json()["detail"]
        assert client.get("/api/thumb/1").status_code == 200  # rows still on disk are served
        assert client.get("/api/info").status_code == 200  # and the process is alive


def self_signed(folder: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_tls_through_uvicorn_with_a_token_and_a_secure_cookie(built, tmp_path):
    cert, key = self_signed(tmp_path)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("carol:carol-0123456789abcdef\n")
    tokens.chmod(0o600)
    app = create_app(Retriever(built, device="cpu"), token_file=tokens, secure_cookie=True)
    verify = ssl.create_default_context(cafile=str(cert))
    with running_server(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=verify, timeout=30) as client:
            assert client.get("/api/info").status_code == 401
            login = client.post("/login", data={"token": "carol-0123456789abcdef"}, follow_redirects=False)
            assert login.status_code == 303 and "Secure" in login.headers["set-cookie"]
            assert client.get("/api/info").json()["user"] == "carol"
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered on that port
            httpx.get(url.replace("https://", "http://") + "/api/info", timeout=10).raise_for_status()
