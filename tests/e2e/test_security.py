"""API keys, CORS and body limits on a real server (Ollama-only, no local model: fast)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

KEY = "s3cret-key-for-tests"
ORIGIN = "http://ui.example.test"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, stopped_port: int) -> Iterator[Server]:
    env = {
        "LOAD_LOCAL_MODEL": "false",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "API_KEY": f"other-key,{KEY}",
        "CORS_ORIGINS": ORIGIN,
        "MAX_BODY_MB": "0.5",
        "LOG_LEVEL": "DEBUG",
    }
    with start_server(tmp_path_factory.mktemp("guarded"), env, uvicorn=True) as srv:
        yield srv


@pytest.mark.parametrize(
    "path", ["/documents", "/model_info", "/openapi.json", "/docs", "/api/admin/backups"]
)
def test_every_route_needs_the_key(guarded: Server, path: str) -> None:
    r = httpx.get(guarded.url + path, timeout=30)
    assert r.status_code == 401
    assert "API key" in r.json()["detail"]
    r = httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401


def test_health_stays_open_for_probes(guarded: Server) -> None:
    assert httpx.get(f"{guarded.url}/health", timeout=30).status_code in (200, 503)


def test_bearer_and_x_api_key_are_accepted(guarded: Server) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        r = httpx.get(f"{guarded.url}/documents", headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["count"] > 0


def test_oversized_json_body_is_413_by_header_and_when_streamed(guarded: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    big = b'{"query": "' + b"a" * 600_000 + b'"}'
    r = httpx.post(
        f"{guarded.url}/ask", content=big, headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "MAX_BODY_MB" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while received
        yield b'{"query": "'
        for _ in range(40):
            yield b"b" * 20_000
        yield b'"}'

    r = httpx.post(
        f"{guarded.url}/ask", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_cors_allows_only_the_configured_origin(guarded: Server) -> None:
    pre = {"Access-Control-Request-Method": "POST"}
    ok = httpx.options(f"{guarded.url}/ask", headers={"Origin": ORIGIN, **pre}, timeout=30)
    assert ok.headers.get("access-control-allow-origin") == ORIGIN
    other = httpx.options(f"{guarded.url}/ask", headers={"Origin": "http://evil.test", **pre})
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_closed_by_default(server: Server) -> None:
    r = httpx.options(
        f"{server.url}/ask",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in r.headers


def test_the_key_never_reaches_the_log(guarded: Server) -> None:
    httpx.get(f"{guarded.url}/documents", headers={"X-API-Key": KEY}, timeout=30)
    httpx.get(f"{guarded.url}/documents", headers={"X-API-Key": "nope"}, timeout=30)
    log = guarded.log()
    assert "GET /documents" in log  # the log is being written
    assert KEY not in log


def test_web_ui_asks_for_a_key_as_its_own_login(guarded: Server) -> None:
    # Browsers cannot send the key header, so /ui has its own login (a key is the password).
    page = httpx.get(f"{guarded.url}/ui/", timeout=60, follow_redirects=True)
    assert page.status_code == 200
    config = httpx.get(f"{guarded.url}/ui/config", timeout=60)
    assert config.status_code in (200, 401)
    assert config.status_code == 401 or config.json().get("auth_required") is True
    assert "components" not in (config.json() if config.status_code == 200 else {})
    denied = httpx.post(
        f"{guarded.url}/ui/login/", data={"username": "x", "password": "wrong"}, timeout=60
    )
    assert denied.status_code == 400
    with httpx.Client(base_url=guarded.url, timeout=60) as browser:
        ok = browser.post("/ui/login/", data={"username": "x", "password": KEY})
        assert ok.status_code == 200, ok.text
        assert "components" in browser.get("/ui/config").json()
    # Everything outside /ui still needs the key itself.
    assert httpx.get(f"{guarded.url}/uix", timeout=30).status_code == 401
