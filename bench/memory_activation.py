"""Story-memory activation cost per generation, in one run: loraflow vs a naive baseline.

loraflow keeps one FAISS index per project on disk and embeds only new or changed entries;
the naive baseline re-embeds every entry on each request (what a memory without a
persistent index does). Both then apply the same keyword + semantic activation; the
activated entry lists must be identical.

    .venv/bin/python bench/memory_activation.py                    # 200 and 1000 entries
    .venv/bin/python bench/memory_activation.py --entries 100 --requests 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import add_json_flag, write_results

from loraflow import db
from loraflow.memory import projects, store
from loraflow.memory.activation import activate
from loraflow.memory.entries import EntryFields
from loraflow.memory.index import MemoryIndexes, entry_text
from loraflow.rag.embed import load_embedder

TOWNS = ["harbour", "forest", "capital", "desert", "mountain", "river", "island", "valley"]
TEXTS = [
    "Mara walked through the harbour while the storm rose over the forest.",
    "The king of the capital sent riders to the desert before dawn.",
    "Near the river the old fisherman mended his nets and sang.",
]


def make_fields(n: int) -> list[EntryFields]:
    return [
        EntryFields(
            "character" if i % 3 else "world",
            f"Person{i}",
            f"Person{i} lives near the {TOWNS[i % len(TOWNS)]} and trades in item {i}.",
            [f"Person{i}"],
            importance=1 + i % 10,
        )
        for i in range(n)
    ]


def count(text: str) -> int:
    return len(text) // 4 + 1


def run(n: int, requests: int, k: int, embedder) -> dict:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'b.db'}")
        p = projects.create_project(engine, "bench")
        store.add_entries(engine, p, make_fields(n), limit=n)
        indexes = MemoryIndexes(Path(tmp) / "idx")
        t0 = time.perf_counter()
        indexes.sync(p.id, store.list_entries(engine, p.id), embedder)
        first = time.perf_counter() - t0

        ours, naive = [], []
        for r in range(requests):
            text = TEXTS[r % len(TEXTS)]
            t0 = time.perf_counter()
            entries = store.list_entries(engine, p.id)
            sem = indexes.search(p.id, entries, embedder, text, k, 0.2)
            a = activate(entries, text, sem, 512, count)
            ours.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            entries = store.list_entries(engine, p.id)
            vecs = embedder.embed_documents([entry_text(e) for e in entries])
            scores = vecs @ embedder.embed_query(text)
            top = np.argsort(-scores)[:k]
            sem_naive = {entries[i].entry_id: float(scores[i]) for i in top if scores[i] >= 0.2}
            b = activate(entries, text, sem_naive, 512, count)
            naive.append(time.perf_counter() - t0)
            same = [c.entry.entry_id for c in a.used] == [c.entry.entry_id for c in b.used]
            assert same, "activation differs between the index and brute force"
        o, b_ = statistics.median(ours), statistics.median(naive)
        print(
            f"{n:5d} entries  first index build {first:6.2f}s  per request: loraflow "
            f"{o * 1000:7.1f} ms  naive {b_ * 1000:8.1f} ms  speed-up {b_ / o:6.1f}x"
        )
        return {
            "entries": n,
            "first_index_build_s": round(first, 3),
            "loraflow_ms": round(o * 1000, 2),
            "naive_ms": round(b_ * 1000, 2),
            "speedup": round(b_ / o, 2),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--k", type=int, default=4)
    add_json_flag(ap)
    args = ap.parse_args()
    embedder = load_embedder("bundled:minilm")
    rows = [run(n, args.requests, args.k, embedder) for n in args.entries]
    write_results(
        args.json,
        "memory_activation",
        {"entries": args.entries, "requests": args.requests, "k": args.k, "embedder": "minilm"},
        rows,
        {f"{r['entries']} entries: loraflow vs naive": r["speedup"] for r in rows},
        baseline="naive: re-embed every entry per request",
        notes=["activated entry lists identical between loraflow and the naive baseline"],
    )


if __name__ == "__main__":
    main()
