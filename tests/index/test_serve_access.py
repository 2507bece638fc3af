"""Access control of the server: tokens, 401 on every route, revocation, the page's login, limits, headers, audit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from unittest import mock

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from cbmir.errors import ConfigError
from cbmir.index.retrieve import Retriever
from cbmir.index.serve import check_options, create_app, main, parser
from cbmir.index.server.auth import parse_tokens, read_token_file
from tests.helpers.serve_fixtures import png_bytes

ALICE = "alice-7Hq2vN9xLkP4wRt8"
BOB = "bob-Zm3Kd8sQ1fYc6Vb0"


@pytest.fixture(scope="module")
def retriever(tiny_index) -> Retriever:
    folder = tiny_index("dataset=breastmnist", "size=28")
    return Retriever(folder, device="cpu")


def token_file(folder: Path, text: str) -> Path:
    path = folder / "tokens.txt"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def tokens(tmp_path) -> Path:
    return token_file(tmp_path, f"# the group\nalice:{ALICE}\n\n{BOB}\n")


def test_token_file_format_and_permissions(tmp_path, tokens):
    assert read_token_file(tokens) == {"alice": ALICE, "token-4": BOB}  # a bare token is named by its line
    tokens.chmod(0o640)
    with pytest.raises(ConfigError, match=r"can be read or changed by other users .*chmod 600"):
        read_token_file(tokens)
    with pytest.raises(ConfigError, match="line 2: the token of carol is shorter than 16 characters"):
        parse_tokens(f"alice:{ALICE}\ncarol:short\n", tokens)
    with pytest.raises(ConfigError, match="line 2: alice appears twice"):
        parse_tokens(f"alice:{ALICE}\nalice:{BOB}\n", tokens)
    with pytest.raises(ConfigError, match="holds no token"):
        parse_tokens("# nobody\n", tokens)


def test_other_hosts_need_an_access_method(tmp_path, tokens, capsys):
    index = str(tmp_path / "no-index")
    for host in ("127.0.0.1", "::1", "localhost"):
        check_options(parser().parse_args([index, "--host", host]))
    with pytest.raises(ConfigError, match=r"--host 0.0.0.0 lets other machines in: give --token-file"):
        check_options(parser().parse_args([index, "--host", "0.0.0.0"]))
    check_options(parser().parse_args([index, "--host", "0.0.0.0", "--token-file", str(tokens)]))
    check_options(parser().parse_args([index, "--host", "0.0.0.0", "--insecure-no-auth"]))
    tokens.chmod(0o644)
    assert main([index, "--host", "0.0.0.0", "--token-file", str(tokens)]) == 2  # refused before the index is read
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbmir: error: ") and "chmod 600" in err and "\n" not in err
    with pytest.raises(ConfigError, match="--ssl-certfile and --ssl-keyfile go together"):
        check_options(parser().parse_args([index, "--ssl-certfile", str(tokens)]))
    with pytest.raises(ConfigError, match="not a rate"):
        create_app(None, query_rate="often")  # checked before the app needs an index


def concrete(path: str) -> str:
    return path.replace("{row}", "1")


def test_every_route_is_401_without_or_with_a_wrong_token(retriever, tokens):
    app = create_app(retriever, token_file=tokens)
    client = TestClient(app)
    routes = [r for r in app.routes if isinstance(r, (APIRoute, Route))]
    paths = {r.path for r in routes}
    assert {"/", "/api/query", "/api/thumb/{row}", "/api/image/{row}", "/docs", "/openapi.json", "/login"} <= paths
    checked = 0
    for route in routes:
        for method in route.methods - {"HEAD"}:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token-0123456789"},
                {"Authorization": f"Basic {ALICE}"},
            ):
                response = client.request(method, concrete(route.path), headers=headers)
                assert response.status_code == 401, (method, route.path, headers, response.status_code)
                assert b"sha256" not in response.content and b"source" not in response.content
                checked += 1
    assert checked >= 3 * 10
    # the right token opens them
    ok = {"Authorization": f"Bearer {ALICE}"}
    for path in ("/", "/api/info", "/api/thumb/1", "/api/image/1", "/api/item/1", "/docs", "/openapi.json"):
        assert client.get(path, headers=ok).status_code == 200, path
    assert client.get("/api/info", headers={"Authorization": f"Bearer {BOB}"}).json()["user"] == "token-4"
    # a browser asking for the page gets the login form, not JSON
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and 'action="/login"' in page.text and "search" in page.text


def test_the_page_logs_in_with_a_cookie_and_a_removed_line_revokes_the_user(retriever, tokens):
    client = TestClient(create_app(retriever, token_file=tokens), base_url="http://127.0.0.1")
    wrong = client.post("/login", data={"token": "not-the-token-at-all"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    login = client.post("/login", data={"token": ALICE}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert client.get("/api/info").json()["user"] == "alice"  # the cookie authenticates the page's fetches
    # alice's line removed: her next request is refused, bob's still goes through
    time.sleep(0.01)
    tokens.write_text(f"{BOB}\n")
    os.utime(tokens, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
    # a token file made readable by others lets nobody in (closed, not open)
    tokens.chmod(0o644)
    assert client.get("/api/info", headers={"Authorization": f"Bearer {BOB}"}).status_code == 401


def test_limits_per_user_are_429_with_retry_after(retriever, tokens):
    client = TestClient(create_app(retriever, token_file=tokens, request_rate="5/minute", query_rate="2/minute"))
    alice, bob = {"Authorization": f"Bearer {ALICE}"}, {"Authorization": f"Bearer {BOB}"}
    body = png_bytes(retriever.index.images[4])
    codes = [client.post("/api/query", files={"file": ("a.png", body)}, headers=alice).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    statuses = [client.get("/api/info", headers=alice).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # 3 queries + 2 infos = the 5 requests of a minute
    refused = client.get("/api/info", headers=alice)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["detail"].startswith("alice sent more than 5 per 1 minute requests; try again in ")
    assert client.get("/api/info", headers=bob).status_code == 200  # another user is not held back


def test_security_headers_and_no_cors(retriever):
    client = TestClient(create_app(retriever))
    page = client.get("/", headers={"Origin": "https://evil.example"})
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'sha256-" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "access-control-allow-origin" not in page.headers
    preflight = client.options(
        "/api/query", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_the_page_says_when_access_is_open_and_when_paths_are_plain(retriever):
    open_info = TestClient(create_app(retriever, insecure_no_auth=True)).get("/api/info").json()
    assert open_info["access"] == "open" and open_info["privacy"] == "pseudonymous"  # the default of a build
    assert "key" not in json.dumps(open_info)  # no key file path is shown
    assert TestClient(create_app(retriever)).get("/api/info").json()["access"] == "loopback"
    with mock.patch.dict(retriever.manifest, {"privacy": {"mode": "plain", "key_id": None, "key_file": None}}):
        assert TestClient(create_app(retriever)).get("/api/info").json()["privacy"] == "plain"


def test_audit_log_records_who_asked_what_and_never_the_token(retriever, tokens, tmp_path):
    log = tmp_path / "audit.jsonl"
    app = create_app(retriever, token_file=tokens, audit_log=log)
    client = TestClient(app, base_url="http://127.0.0.1")
    body = png_bytes(retriever.index.images[6])
    ok = client.post(
        "/api/query", files={"file": ("case.png", body)}, data={"k": "3"}, headers={"Authorization": f"Bearer {ALICE}"}
    )
    client.get("/api/thumb/6", headers={"Authorization": f"Bearer {ALICE}"})
    client.get("/api/info", headers={"Authorization": "Bearer guessed-token-1234567"})
    client.post("/login", data={"token": BOB})
    app.state.audit.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    query, thumb, refused, login = lines[:4]
    assert {k: query[k] for k in ("user", "method", "route", "status")} == {
        "user": "alice", "method": "POST", "route": "/api/query", "status": 200,
    }  # fmt: skip
    assert query["rows"] == [n["row"] for n in ok.json()["neighbours"]] and len(query["rows"]) == 3
    assert query["client"].startswith("testclient") or query["client"].count(":") >= 1
    assert (thumb["route"], thumb["rows"], refused["user"], refused["status"]) == ("/api/thumb/6", [6], None, 401)
    assert set(query) == {"time", "user", "client", "method", "route", "status", "rows", "ms"}
    text = log.read_text()
    assert ALICE not in text and BOB not in text and "guessed-token" not in text and "case.png" not in text
    assert login["route"] == "/login" and login["status"] == 303
