"""Fault: the disk fills up while an ingest saves the vector store.

The disk is simulated with RLIMIT_FSIZE in a subprocess (as tests/unit/test_backup.py
does): writes past the limit fail with EFBIG, as they would with ENOSPC. The ingest must
fail with a clear error, the saved version must stay intact and readable, and the store in
memory must go back to it (so the service does not serve documents a restart would lose).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loraflow.rag.embed import Embedder
from loraflow.rag.ingest import ingest_paths
from loraflow.rag.store import FaissStore

pytestmark = pytest.mark.integration

CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
from loraflow.errors import StoreError
from loraflow.rag.embed import load_embedder
from loraflow.rag.ingest import ingest_paths
from loraflow.rag.store import FaissStore

store_dir, new_doc, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
embedder = load_embedder("bundled:minilm")
store = FaissStore.open(store_dir, embedder.name, embedder.dim)
# A full disk: writes past `limit` bytes fail with EFBIG instead of killing the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    ingest_paths([new_doc], embedder, store, 400, 50)
except StoreError as exc:
    docs = sorted(d.source for d in store.list_documents())
    print(json.dumps({"error": str(exc), "docs": docs, "chunks": store.count_chunks(),
                      "kind": type(exc).__name__, "status": exc.http_status}))
else:
    print(json.dumps({"error": None}))
"""


def test_a_full_disk_fails_the_ingest_and_keeps_the_saved_store(
    tmp_path: Path, minilm: Embedder
) -> None:
    store_dir = tmp_path / "store"
    first = tmp_path / "first.txt"
    first.write_text("The lighthouse keeper logs the tide twice a day.\n" * 10)
    store = FaissStore.open(store_dir, minilm.name, minilm.dim)
    ingest_paths([first], minilm, store, 400, 50)
    before_docs = sorted(d.source for d in store.list_documents())
    before_hits = [(h.chunk.chunk_id, round(h.score, 5)) for h in store.search(_q(minilm), 3)]
    saved = (store_dir / "CURRENT").read_text()
    largest = max(p.stat().st_size for p in (store_dir / saved.strip()).iterdir())

    big = tmp_path / "big.txt"
    big.write_text(
        "\n".join(f"Entry {i}: the harbour crane moved {i * 3} crates today." for i in range(600))
    )
    # Room for the files of the saved version, not for the much larger new index.
    limit = largest + 4096
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(store_dir), str(big), str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"], "the save should not fit under the limit"
    assert "Could not save the vector store" in result["error"]
    assert "File too large" in result["error"] or "No space" in result["error"]
    assert "unchanged" in result["error"]
    # A full disk is the operator's to fix: the API answers 507, not a 500.
    assert (result["kind"], result["status"]) == ("DiskFull", 507)
    # The process that hit the full disk serves the saved state, not its unsaved changes.
    assert result["docs"] == before_docs
    assert result["chunks"] == store.count_chunks()

    # On disk: the same version, readable, no half-written folders left behind.
    assert (store_dir / "CURRENT").read_text() == saved
    current = saved.strip()
    left = [
        p.name
        for p in store_dir.iterdir()
        if p.name.startswith((".tmp-", ".CURRENT-")) or (p.name[:1] == "v" and p.name != current)
    ]
    assert left == []
    reopened = FaissStore.open(store_dir, minilm.name, minilm.dim)
    assert sorted(d.source for d in reopened.list_documents()) == before_docs
    hits = [(h.chunk.chunk_id, round(h.score, 5)) for h in reopened.search(_q(minilm), 3)]
    assert hits == before_hits

    # With space again, the same ingest completes.
    ingest_paths([big], minilm, reopened, 400, 50)
    again = FaissStore.open(store_dir, minilm.name, minilm.dim)
    assert "big.txt" in {d.source for d in again.list_documents()}


def _q(embedder: Embedder):  # noqa: ANN202 - a numpy row
    return embedder.embed_query("When does the keeper log the tide?")
