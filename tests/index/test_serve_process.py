"""`cbmir serve` as a process: the command line's access options, SIGHUP, the audit log, a clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cbmir.index.generations import POINTER
from tests.helpers.serve_fixtures import free_port

REPO = Path(__file__).resolve().parents[2]
DANA, ERIN = "dana-5Fh8Lq2Wx7Zp3Nc1", "erin-9Tg4Kb6Yv1Rm8Qs2"


@pytest.mark.slow
def test_sighup_switches_generation_and_the_audit_log_holds_no_token(tiny_index, tmp_path):
    built = tiny_index("dataset=breastmnist", "size=28")
    index = tmp_path / "index"
    shutil.copytree(built, index)
    tokens, audit = tmp_path / "tokens.txt", tmp_path / "audit.jsonl"
    tokens.write_text(f"dana:{DANA}\nerin:{ERIN}\n")
    tokens.chmod(0o600)
    port = free_port()
    command = [sys.executable, "-m", "cbmir.serve", str(index), "--port", str(port), "--device", "cpu",
               "--token-file", str(tokens), "--audit-log", str(audit), "--reload-interval", "3600"]  # fmt: skip
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    dana = {"Authorization": f"Bearer {DANA}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    if client.get("/api/info", headers=dana).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            assert client.get("/api/info").status_code == 401
            assert client.get("/api/info", headers=dana).json()["generation"] == "g000001"
            # a new generation and erin's line removed, then SIGHUP: both taken at once (the poll is an hour away)
            shutil.copytree(index / "g000001", index / "g000002")
            (index / POINTER).write_text("g000002\n")
            tokens.write_text(f"dana:{DANA}\n")
            os.kill(server.pid, signal.SIGHUP)
            deadline = time.monotonic() + 60
            while client.get("/api/info", headers=dana).json()["generation"] != "g000002":
                assert time.monotonic() < deadline, "SIGHUP did not switch the generation"
                time.sleep(0.2)
            assert client.get("/api/info", headers={"Authorization": f"Bearer {ERIN}"}).status_code == 401
            assert client.get("/api/thumb/2", headers=dana).status_code == 200
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
    text = audit.read_text()
    assert DANA not in text and ERIN not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"user": "dana", "route": "/api/thumb/2", "status": 200, "rows": [2]}.items() <= lines[-1].items()
    assert [line["status"] for line in lines if line["user"] is None] == [401, 401]
    server_log = (tmp_path / "server.log").read_text()
    assert "now serving generation g000002" in server_log and "Traceback" not in server_log
