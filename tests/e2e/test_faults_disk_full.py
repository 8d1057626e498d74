"""Fault: the server's disk fills up while it stores an upload or writes a backup.

The server runs under RLIMIT_FSIZE (exec'd through a small wrapper): writes past the limit
fail with EFBIG, as ENOSPC would on a full disk. The upload must get a 507 that says the
disk is full, leave no partial file behind, keep the documents as they were, and the
service must go on answering. A backup gets a 507 too and leaves no partial archive.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

# Per-file limit: the fresh database and logs fit, the upload below does not. The upload
# stays under Starlette's 1 MB in-memory spool, so it is loraflow's own write that fails.
LIMIT = 768 * 1024
WRAPPER = r"""
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec, like the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Server]:
    port = free_port()
    env = {
        "CACHE_DIR": str(model_cache),
        "LOAD_LOCAL_MODEL": "false",
        "AUTO_INGEST_SAMPLE": "false",
        "ENABLE_UI": "false",
        "MAX_UPLOAD_MB": "5",
    }
    argv = [sys.executable, "-c", WRAPPER, str(LIMIT), *cli_argv("serve", "--port", str(port))]
    srv = Server(tmp_path_factory.mktemp("disk-full"), env, argv, port)
    srv.wait_ready()
    yield srv
    srv.stop()


def test_an_upload_to_a_full_disk_is_a_clear_507_and_nothing_changes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        small = ("notes.txt", b"The lighthouse keeper logs the tide twice a day.\n" * 20)
        assert client.post("/documents", files=[("files", small)]).status_code == 200
        before = client.get("/documents").json()["documents"]
        uploads = server.data_dir / "uploads"
        stored = sorted(uploads.iterdir())

        big = ("big.txt", b"Harbour crane log: moved crates at the north pier.\n" * 18000)
        assert LIMIT < len(big[1]) < 1024 * 1024
        r = client.post("/documents", files=[("files", big)])
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"] and "free space" in r.json()["hint"]
        assert "Traceback" not in r.text
        # No partial upload left behind; the knowledge base is as it was.
        assert sorted(uploads.iterdir()) == stored
        assert client.get("/documents").json()["documents"] == before

        # The service goes on: a file that fits is ingested.
        other = ("more.txt", b"The keeper also records the wind direction.\n" * 20)
        assert client.post("/documents", files=[("files", other)]).status_code == 200
        sources = {d["source"] for d in client.get("/documents").json()["documents"]}
        assert sources == {"notes.txt", "more.txt"}


def test_a_backup_to_a_full_disk_is_a_507_and_leaves_no_archive(server: Server) -> None:
    # Incompressible bytes make the archive larger than the file-size limit.
    blob = server.data_dir / "blobs" / "noise.bin"
    blob.parent.mkdir()
    blob.write_bytes(os.urandom(LIMIT + 64 * 1024))
    backups = server.data_dir / "backups"
    with httpx.Client(base_url=server.url, timeout=300) as client:
        try:
            r = client.post("/api/admin/backup")
            assert r.status_code == 507, r.text
            body = r.json()
            assert "no partial archive" in body["detail"] and "free disk space" in body["hint"]
            assert not list(backups.iterdir())
        finally:
            blob.unlink()
        # With room again, the next backup is written.
        r = client.post("/api/admin/backup")
        assert r.status_code == 200, r.text
        assert [p.name for p in backups.iterdir()] == [r.json()["name"]]
        assert client.get("/api/admin/backups").json()["count"] == 1
