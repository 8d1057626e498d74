"""One store folder shared by several processes (server workers): refresh and write lock."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from loraflow.rag.chunking import Chunk
from loraflow.rag.store import DocumentInfo, FaissStore

DIM = 8


def _add(store: FaissStore, source: str, seed: int) -> None:
    vec = np.random.default_rng(seed).normal(size=(1, DIM)).astype("float32")
    vec /= np.linalg.norm(vec)
    doc = DocumentInfo(f"id-{source}", source, f"sha-{source}", 1, 5, "2026-01-01T00:00:00")
    store.add_document(doc, [Chunk("hello", 0, 5)], vec)


def test_a_second_instance_sees_saves_after_refresh(tmp_path: Path) -> None:
    a = FaissStore.open(tmp_path, "m", DIM)
    b = FaissStore.open(tmp_path, "m", DIM)
    _add(a, "one.txt", 1)
    a.save()
    assert b.list_documents() == []
    assert b.refresh() is True
    assert [d.source for d in b.list_documents()] == ["one.txt"]
    assert b.refresh() is False  # nothing new: no reload


def test_write_lock_prevents_lost_updates_between_instances(tmp_path: Path) -> None:
    a = FaissStore.open(tmp_path, "m", DIM)
    b = FaissStore.open(tmp_path, "m", DIM)
    with a.write_lock():
        _add(a, "a.txt", 1)
        a.save()
    with b.write_lock():  # refreshes first, so a.txt is kept
        _add(b, "b.txt", 2)
        b.save()
    fresh = FaissStore.open(tmp_path, "m", DIM)
    assert sorted(d.source for d in fresh.list_documents()) == ["a.txt", "b.txt"]


def _worker(path: str, name: str, n: int) -> None:
    store = FaissStore.open(Path(path), "m", DIM)
    for i in range(n):
        with store.write_lock():
            _add(store, f"{name}-{i}.txt", hash((name, i)) % 1000)
            store.save()


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, 6)) for w in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    fresh = FaissStore.open(tmp_path, "m", DIM)
    assert len(fresh.list_documents()) == 12
    assert fresh.count_chunks() == 12
