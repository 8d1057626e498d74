"""Hybrid retrieval over a large collection: a published keyword index and HNSW vs today's way.

Run: .venv/bin/python bench/retrieval_scale.py [--chunks 200000] [--json FILE]
Builds a synthetic FAISS collection (a fixed vocabulary of English pseudo-words and Chinese
characters; vectors from a seeded topic-mixture generator: 384-d topic centre + Gaussian noise,
unit length), publishes it once, then measures in the same run:
  - hybrid query p50/p99: the old way (flat index, BM25 built in-process from every chunk)
    vs the new way (HNSW index + the writer's memory-mapped BM25 index);
  - recall@10 of the HNSW index against exact search (held-out perturbed chunk vectors);
  - a second worker's first hybrid query after another process publishes a new version;
  - that worker's resident memory growth for the keyword index vs its size on disk.
The bundled MiniLM embedder runs on a small sample only, to state the cost of a query's
embedding that the synthetic vectors leave out.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _results import add_json_flag, write_results

DIM = 384
TOPICS = 512
CHUNK_TOKENS = 40
DOC_CHUNKS = 100
TARGETS = {
    "hybrid p50 ms (new)": ("<=", 30.0),
    "second worker first query s (new)": ("<=", 1.0),
    "keyword index RSS growth / on-disk size": ("<=", 1.0),
    "HNSW recall@10 vs exact": (">=", 0.95),
}


def _vocab() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(1)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi"]
    words = sorted({"".join(rng.choice(syll, size=rng.integers(2, 5))) for _ in range(12000)})
    hanzi = [chr(0x4E00 + i) for i in range(0, 6000, 2)]  # 3,000 characters
    return words, hanzi


class _Piece:
    def __init__(self, text: str) -> None:
        self.text, self.start, self.end = text, 0, len(text)


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`n` chunk texts (one in five Chinese) and their topic ids, Zipf-distributed words."""
    words, hanzi = _vocab()
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, TOPICS, n)
    out = []
    for i in range(n):
        # Each topic favours its own slice of the vocabulary, so keywords carry signal.
        t = int(topics[i])
        if i % 5 == 4:
            ids = (t * 7 + rng.zipf(1.3, CHUNK_TOKENS)) % len(hanzi)
            out.append("".join(hanzi[j] for j in ids) + "。")
        else:
            ids = (t * 23 + rng.zipf(1.3, CHUNK_TOKENS)) % len(words)
            out.append(" ".join(words[j] for j in ids) + ".")
    return out, topics


def _centres() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(TOPICS, DIM)).astype(np.float32)


def _vectors(topics: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = _centres()[topics] + 0.8 * rng.normal(size=(len(topics), DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _StubEmbedder:
    """Query vectors near a known chunk's vector (the real embedder is timed separately)."""

    name, dim = "synthetic-topic-mixture", DIM

    def __init__(self) -> None:
        self.next: np.ndarray | None = None

    def embed_query(self, text: str) -> np.ndarray:
        assert self.next is not None
        return self.next


def _populate(path: Path, n: int, threshold: int) -> float:
    from loraflow.rag.store import DocumentInfo, FaissStore

    store = FaissStore.open(path, _StubEmbedder.name, DIM, ann_threshold=threshold)
    for start in range(0, n, 20_000):
        texts, topics = _texts(min(20_000, n - start), seed=start)
        vecs = _vectors(topics, seed=start + 1)
        for d in range(0, len(texts), DOC_CHUNKS):
            doc_id = f"doc{start + d}"
            doc = DocumentInfo(doc_id, f"{doc_id}.md", "sha", 0, 0, "")
            pieces = [_Piece(t) for t in texts[d : d + DOC_CHUNKS]]
            store.add_document(doc, pieces, vecs[d : d + DOC_CHUNKS])
    started = time.perf_counter()
    store.save()
    return time.perf_counter() - started


def _queries(store, count: int, seed: int) -> list[tuple[str, np.ndarray]]:  # noqa: ANN001
    import faiss

    ids = faiss.vector_to_array(store._index.id_map)
    inner = faiss.downcast_index(store._index.index)
    rng = np.random.default_rng(seed)
    out = []
    for row in rng.choice(len(ids), count, replace=False):
        text = store._chunks[int(ids[row])].text
        q = text[:6] if "。" in text else " ".join(text.split()[:4])
        v = inner.reconstruct(int(row)) + 0.3 * rng.normal(size=DIM).astype(np.float32) / np.sqrt(
            DIM
        )
        out.append((q, (v / np.linalg.norm(v)).astype(np.float32)))
    return out


def _time_hybrid(store, keyword, queries) -> list[float]:  # noqa: ANN001
    from loraflow.rag.hybrid import search

    emb = _StubEmbedder()
    times = []
    for text, vec in queries:
        emb.next = vec
        t = time.perf_counter()
        search(text, emb, store, keyword, k=5, mode="hybrid")  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    return times


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _worker(path: str, way: str, conn) -> None:  # noqa: ANN001
    """A running server worker: opened before the publish, asked its first query after it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from loraflow.rag.bm25 import BM25Index
    from loraflow.rag.store import FaissStore

    store = FaissStore.open(Path(path), _StubEmbedder.name, DIM, ann_threshold=0)
    if way == "old":
        BM25Index(store.chunks())  # today a worker already holds an index of the old version
    queries = _queries(store, 30, seed=5)
    conn.send("ready")
    conn.recv()  # the publish is done
    t = time.perf_counter()
    store.refresh()
    keyword = store.keyword_index() if way == "new" else BM25Index(store.chunks())
    first = _time_hybrid(store, keyword, queries[:1])[0]
    first_total = time.perf_counter() - t
    refresh_only = time.perf_counter()
    folder = Path(path) / (Path(path) / "CURRENT").read_text().strip()
    store._load(folder)
    reload_s = time.perf_counter() - refresh_only
    # Memory of the keyword index alone: mapped (new) or built (old), then queried.
    del keyword
    chunks = store.chunks()
    gc.collect()
    rss0 = _rss()
    kw = BM25Index.load(folder, chunks) if way == "new" else BM25Index(chunks)
    assert kw is not None
    for text, _ in queries:
        kw.search(text, 20)
    conn.send(
        {
            "first_s": first_total,
            "query_s": first,
            "reload_s": reload_s,
            "keyword_rss_growth": _rss() - rss0,
        }
    )


def _second_worker(path: Path, way: str, n_new: int) -> dict:
    from loraflow.rag.store import DocumentInfo, FaissStore

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_worker, args=(str(path), way, child))
    proc.start()
    assert parent.recv() == "ready"
    writer = FaissStore.open(path, _StubEmbedder.name, DIM)
    writer.ann_threshold = THRESHOLD
    texts, topics = _texts(DOC_CHUNKS, seed=10_000_000 + n_new)
    with writer.write_lock():
        doc = DocumentInfo(f"new{n_new}", f"new{n_new}.md", "sha", 0, 0, "")
        writer.add_document(doc, [_Piece(t) for t in texts], _vectors(topics, seed=n_new))
        t = time.perf_counter()
        writer.save()
        publish_s = time.perf_counter() - t
    parent.send("go")
    out = parent.recv()
    proc.join()
    return {**out, "publish_s": publish_s}


THRESHOLD = 100_000


def main() -> None:
    global THRESHOLD
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    add_json_flag(ap)
    args = ap.parse_args()
    THRESHOLD = min(THRESHOLD, args.chunks)
    import torch

    from loraflow.rag.bm25 import BM25Index
    from loraflow.rag.store import FaissStore

    cap = torch.backends.cpu.get_cpu_capability()
    print(f"{args.chunks} chunks, {os.cpu_count()} cores, CPU capability {cap}")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    path = root / "vs"
    try:
        build_s = _populate(path, args.chunks, THRESHOLD)
        print(f"publish (meta + BM25 + HNSW): {build_s:.1f} s")
        store = FaissStore.open(path, _StubEmbedder.name, DIM, ann_threshold=THRESHOLD)
        ann = store.ann or {}
        queries = _queries(store, args.queries, seed=3)
        # New way: HNSW + the published, memory-mapped keyword index.
        new = _time_hybrid(store, store.keyword_index(), queries)
        # Old way: the same chunks behind an exact flat index, BM25 built in this process.
        from loraflow.rag.ann import flat_of

        exact = FaissStore(path, _StubEmbedder.name, DIM)
        exact._index, exact._chunks = flat_of(store._index), store._chunks
        t = time.perf_counter()
        old_kw = BM25Index(exact.chunks())
        old_build_s = time.perf_counter() - t
        old = _time_hybrid(exact, old_kw, queries)
        found = 0
        for _, vec in queries:
            want = {h.chunk.chunk_id for h in exact.search(vec, 10)}
            found += len(want & {h.chunk.chunk_id for h in store.search(vec, 10)})
        recall = found / (10 * len(queries))
        del old_kw, exact, store
        disk = sum(p.stat().st_size for p in (path / "v1").glob("bm25.*"))
        w_new = _second_worker(path, "new", 1)
        w_old = _second_worker(path, "old", 2)
        mini = _real_embedder_ms()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ms = lambda xs, p: float(np.percentile(xs, p) * 1000)  # noqa: E731
    rows = [
        _row(
            "old: flat + BM25 built per worker", old, w_old, ms, bm25_build_s=round(old_build_s, 1)
        ),
        _row("new: HNSW + published BM25", new, w_new, ms, recall_vs_exact=recall, **ann),
    ]
    print(
        f"hybrid p50/p99  old {ms(old, 50):.1f}/{ms(old, 99):.1f} ms   "
        f"new {ms(new, 50):.1f}/{ms(new, 99):.1f} ms  (target p50 <= 30 ms)"
    )
    print(f"BM25 build in a worker (old way): {old_build_s:.1f} s")
    print(f"HNSW {ann}; recall@10 vs exact on held-out queries {recall:.3f} (target >= 0.95)")
    for name, w in (("old", w_old), ("new", w_new)):
        print(
            f"second worker ({name}): first query after publish {w['first_s']:.2f} s "
            f"(of which the query {w['query_s'] * 1000:.1f} ms, reloading the version "
            f"{w['reload_s']:.2f} s); keyword index RSS growth "
            f"{w['keyword_rss_growth'] / 2**20:.1f} MB; "
            f"writer's publish {w['publish_s']:.1f} s"
        )
    growth = w_new["keyword_rss_growth"] / max(disk, 1)
    print(f"keyword index on disk {disk / 2**20:.1f} MB; RSS growth / on-disk = {growth:.2f}")
    print(f"MiniLM query embedding (real embedder, not in the figures above): {mini:.1f} ms")
    ratios = {
        "hybrid p50 ms (new)": ms(new, 50),
        "hybrid p50 speed-up (old / new)": ms(old, 50) / ms(new, 50),
        "second worker first query s (new)": w_new["first_s"],
        "second worker first query speed-up": w_old["first_s"] / w_new["first_s"],
        "keyword index RSS growth / on-disk size": growth,
        "HNSW recall@10 vs exact": recall,
    }
    for k, v in ratios.items():
        print(f"  {k}: {v:.3f}")
    write_results(
        args.json,
        "retrieval_scale",
        {
            "chunks": args.chunks,
            "dim": DIM,
            "queries": args.queries,
            "cpu_capability": cap,
            "vectors": "topic mixture: 512 N(0,1) centres + 0.8 N(0,1) noise, unit length",
        },
        rows,
        ratios,
        baseline="flat FAISS + BM25 built in each process",
        lower_is_better=[
            "hybrid p50 ms (new)",
            "second worker first query s (new)",
            "keyword index RSS growth / on-disk size",
        ],
        targets={k: v for k, v in TARGETS.items() if k in ratios},
    )


def _row(way: str, times: list[float], worker: dict, ms, **extra) -> dict:  # noqa: ANN001
    """One flat table row: latencies, the second worker's figures, then `extra`."""
    return {
        "way": way,
        "hybrid_p50_ms": round(ms(times, 50), 2),
        "hybrid_p99_ms": round(ms(times, 99), 2),
        "worker_first_query_s": round(worker["first_s"], 3),
        "worker_reload_s": round(worker["reload_s"], 3),
        "keyword_rss_growth_mb": round(worker["keyword_rss_growth"] / 2**20, 1),
        "publish_s": round(worker["publish_s"], 1),
        **{k: v for k, v in extra.items() if k not in ("kind", "recall_target")},
    }


def _real_embedder_ms() -> float:
    from loraflow.rag.embed import load_embedder

    emb = load_embedder("bundled:minilm")
    texts, _ = _texts(20, seed=99)
    emb.embed_query(texts[0])
    t = time.perf_counter()
    for text in texts:
        emb.embed_query(" ".join(text.split()[:6]))
    return (time.perf_counter() - t) / len(texts) * 1000


if __name__ == "__main__":
    main()
