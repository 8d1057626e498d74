"""Fault: the service is SIGKILLed in the middle of a large ingest.

After a restart the knowledge base is exactly what it was before the ingest (documents and
search results), and running the same ingest again completes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

QUERY = "How do I switch to Ollama without restarting?"
TOPICS = ["harbor", "glacier", "orchard", "lantern", "meadow", "quarry", "canyon", "delta"]


def big_files(n: int) -> list[tuple[str, bytes]]:
    """Distinct text files, large enough that embedding them takes a few seconds here."""
    files = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        lines = [
            f"Report {i} on the {topic}: paragraph {j} describes the {topic} at hour {j % 24} "
            f"with {j * 7 % 101} observations, noted by team {i}-{j}."
            for j in range(100)
        ]
        files.append((f"report-{i}.txt", "\n".join(lines).encode()))
    return files


def start(data: Path, model_cache: Path) -> Server:
    port = free_port()
    env = {
        "CACHE_DIR": str(model_cache),
        "LOAD_LOCAL_MODEL": "false",
        "ENABLE_UI": "false",
        "MAX_UPLOAD_MB": "5",
    }
    srv = Server(data, env, cli_argv("serve", "--port", str(port)), port)
    srv.wait_ready()
    return srv


def snapshot(client: httpx.Client) -> dict[str, Any]:
    docs = client.get("/documents").json()
    hits = client.post("/api/collections/default/search", json={"query": QUERY, "k": 5}).json()
    return {
        "documents": sorted((d["doc_id"], d["source"], d["n_chunks"]) for d in docs["documents"]),
        "hits": [(h["doc_id"], h["position"], round(h["score"], 4)) for h in hits["results"]],
    }


def upload(client: httpx.Client, files: list[tuple[str, bytes]]) -> httpx.Response:
    return client.post("/documents", files=[("files", f) for f in files], timeout=600)


@pytest.mark.timeout(900)
def test_a_kill_during_ingest_keeps_the_old_index_and_a_rerun_completes(
    tmp_path: Path, model_cache: Path
) -> None:
    data = tmp_path / "data"
    files = big_files(12)
    srv = start(data, model_cache)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            before = snapshot(client)
            assert before["documents"] and before["hits"]  # the sample knowledge base

            outcome: dict[str, Any] = {}

            def send() -> None:
                try:
                    outcome["response"] = upload(client, files)
                except httpx.HTTPError as exc:
                    outcome["error"] = exc

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            uploads = data / "uploads"
            # The uploads are stored first; once all are there, embedding is under way. The
            # server is frozen at once (it cannot finish hundreds of chunks in a poll
            # interval), so the kill always lands inside the ingest, however fast the machine.
            deadline = time.monotonic() + 300
            while len(list(uploads.glob("*.txt"))) < len(files):
                assert time.monotonic() < deadline, "the upload never reached the server"
                time.sleep(0.02)
            os.kill(srv.proc.pid, signal.SIGSTOP)
            os.kill(srv.proc.pid, signal.SIGKILL)
            sender.join(60)
            assert "error" in outcome, "the ingest finished before the kill; make it bigger"
    finally:
        srv.stop()

    again = start(data, model_cache)
    try:
        with httpx.Client(base_url=again.url, timeout=60) as client:
            assert snapshot(client) == before
            assert client.get("/health").json()["components"]["vector_store"] is True
            r = upload(client, files)
            assert r.status_code == 200, r.text
            assert len(r.json()["added"]) == len(files)
            after = snapshot(client)
            sources = {source for _, source, _ in after["documents"]}
            assert {name for name, _ in files} <= sources
            assert set(before["documents"]) <= set(after["documents"])
    finally:
        again.stop()
