"""`loraflow serve --workers 2`: a switch or an ingest made through one worker is seen by all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    smollm2_dir: Path,
    stopped_port: int,
) -> Iterator[Server]:
    env = {
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "MAX_NEW_TOKENS": "8",
    }
    with start_server(tmp_path_factory.mktemp("workers"), env, ("serve", "--workers", "2")) as srv:
        _wait_for_workers(srv)
        yield srv


def _wait_for_workers(srv: Server, n: int = 2, timeout: float = 300) -> None:
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < n and time.monotonic() < deadline:
        # Fresh connections so the kernel can hand requests to either worker.
        r = httpx.get(f"{srv.url}/model_info", timeout=60)
        if r.status_code == 200:
            pids.add(r.json()["worker_pid"])
        else:
            time.sleep(0.5)
    assert len(pids) == n, f"only saw workers {pids}:\n{srv.log()}"


def _from_every_worker(srv: Server, path: str, n: int = 2, tries: int = 200) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for _ in range(tries):
        body = httpx.get(f"{srv.url}{path}", timeout=60).json()
        pid = httpx.get(f"{srv.url}/model_info", timeout=60).json()["worker_pid"]
        seen.setdefault(pid, body)
        if len(seen) == n:
            break
    assert len(seen) == n, "requests never reached both workers"
    return seen


def test_switch_through_one_worker_is_seen_by_all(two_workers: Server) -> None:
    r = httpx.post(f"{two_workers.url}/switch_model", json={"use_lora": False}, timeout=60)
    assert r.status_code == 200
    infos = _from_every_worker(two_workers, "/model_info")
    assert {i["engine"] for i in infos.values()} == {"ollama"}
    httpx.post(f"{two_workers.url}/switch_model", json={"engine": "local"}, timeout=60)
    infos = _from_every_worker(two_workers, "/model_info")
    assert {i["model_used"] for i in infos.values()} == {"base"}


def test_sample_is_ingested_once_and_uploads_are_seen_by_all(two_workers: Server) -> None:
    r = httpx.post(
        f"{two_workers.url}/documents",
        files={"files": ("shared.md", b"# Shared\nBoth workers see this note.", "text/markdown")},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    listings = _from_every_worker(two_workers, "/documents")
    for body in listings.values():
        sources = [d["source"] for d in body["documents"]]
        assert "shared.md" in sources and "overview.md" in sources
        assert len(sources) == len(set(sources))  # the sample was not ingested twice
