"""Backups through the admin routes of the real server, taken while it answers and ingests."""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loraflow.config import Settings
from loraflow.errors import Conflict
from loraflow.services.know.ask import AskRequest, ask
from loraflow.services.ops.backup import restore_backup, verify_backup
from loraflow.services.runtime import build_runtime
from tests.e2e.conftest import ADAPTER_NAME
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

QUESTION = "How large are the chunks and how much do they overlap?"
UPLOAD = (
    "harbour.txt",
    b"Harbour crane ledger: the crane Kestrel moved 412 timber crates at the north pier.\n",
)


def _sources(response: httpx.Response) -> list[tuple[str, int, str]]:
    assert response.status_code == 200, response.text
    return [(s["source"], s["chunk"], s["content"]) for s in response.json()["source_documents"]]


def _ask(url: str) -> httpx.Response:
    # Two chunks and one new token: the sources are what is compared, and reading the
    # prompt and generating cost the most here.
    body = {"query": QUESTION, "use_lora": True, "top_k": 2, "max_new_tokens": 1}
    return httpx.post(f"{url}/ask", json=body, timeout=300)


def test_admin_routes_write_list_download_and_verify_a_backup(
    client: httpx.Client, server: Server, tmp_path: Path
) -> None:
    r = client.post("/api/admin/backup")
    assert r.status_code == 200, r.text
    made = r.json()
    name = made["name"]
    try:
        assert made["files"] > 0 and made["tables"]["kb_collections"] >= 0
        listed = client.get("/api/admin/backups").json()
        assert {"name": name, "bytes": made["bytes"]} in listed["backups"]

        download = client.get(f"/api/admin/backups/{name}")
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/gzip"
        copy = tmp_path / name
        copy.write_bytes(download.content)
        verify_backup(copy)
        with tarfile.open(copy) as tar:
            names = tar.getnames()
        assert f"files/lora_adapters/{ADAPTER_NAME}/adapter_config.json" in names
        assert not [n for n in names if n.endswith(".lock") or "/backups/" in n]

        verified = client.post(f"/api/admin/backups/{name}/verify").json()
        assert verified["ok"] is True and verified["members"] == len(names) - 1

        # Only archive names of the backups folder are served.
        assert client.get("/api/admin/backups/server.log").status_code == 422
        missing = client.get("/api/admin/backups/nope.tar.gz")
        assert missing.status_code == 404 and name in missing.json()["detail"]
    finally:
        (server.data_dir / "backups" / name).unlink()


def test_backup_while_asking_and_uploading_restores_to_the_same_answers(
    client: httpx.Client, server: Server, server_env: dict[str, str], tmp_path: Path
) -> None:
    before = _sources(_ask(server.url))
    documents = {d["source"] for d in client.get("/documents").json()["documents"]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        asks = [pool.submit(_ask, server.url) for _ in range(2)]
        upload = pool.submit(
            httpx.post, f"{server.url}/documents", files={"files": UPLOAD}, timeout=300
        )
        backup = pool.submit(httpx.post, f"{server.url}/api/admin/backup", timeout=300)
        answered = [_sources(a.result()) for a in asks]
        assert upload.result().status_code == 200, upload.result().text
        made = backup.result()
    assert made.status_code == 200, made.text
    after = _sources(_ask(server.url))  # the upload is ranked too (it shares no words)
    assert all(a in (before, after) for a in answered)
    name = made.json()["name"]
    added = upload.result().json()["added"][0]["doc_id"]
    try:
        archive = tmp_path / name
        archive.write_bytes(client.get(f"/api/admin/backups/{name}").content)

        # The server holds its data dir: restoring over it is refused and nothing moves.
        live = Settings(data_dir=server.data_dir, load_local_model=False)
        with pytest.raises(Conflict, match="in use by a running loraflow service"):
            restore_backup(archive, live, force=True)
        assert (server.data_dir / "backups" / name).is_file()
        assert client.get("/documents").json()["count"] == len(documents) + 1

        # A fresh data dir answers the same question from the same chunks. It generates
        # through the server's /v1 (REMOTE_BACKEND=openai) rather than loading SmolLM2 again.
        fresh = Settings(
            data_dir=tmp_path / "restored",
            cache_dir=server_env["CACHE_DIR"],
            load_local_model=False,
            remote_backend="openai",
            openai_base_url=f"{server.url}/v1",
            openai_model="bundled:smollm2",
        )
        restore_backup(archive, fresh)
        rt = build_runtime(fresh)
        got = {d.source for d in rt.store.list_documents()}
        # The upload is in the archive whole (document, chunks, vectors) or not at all.
        assert got in (documents, documents | {UPLOAD[0]})
        result = ask(rt, AskRequest(query=QUESTION, use_lora=False, top_k=2, max_new_tokens=1))
        assert result.engine != "local"
        restored = [(s["source"], s["chunk"], s["content"]) for s in result.source_documents]
        assert restored == (after if UPLOAD[0] in got else before)
        rt.db.dispose()
    finally:
        client.delete(f"/documents/{added}")
        (server.data_dir / "backups" / name).unlink()
