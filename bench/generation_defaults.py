"""Generation defaults for /ask: answer length, loops and citations per setting, side by side.

Run: .venv/bin/python bench/generation_defaults.py [--questions N] [--json FILE]
Asks the sample knowledge base's questions (sample_data/qa.jsonl) through the real /ask
pipeline with the bundled SmolLM2 (retrieval, prompt, local engine), once per setting, the
questions of one setting decoded side by side by the batching engine. Per setting it prints:
mean answer length in tokens, the share of answers cut at the length limit, the share with a
repeated word 8-gram (a loop), the share of cited [n] that name a source that exists, and
the seconds per answer. The first setting is the old default (repetition penalty 1.0,
512 tokens); ratios compare the others with it.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import add_json_flag, write_results

from loraflow.config import Settings
from loraflow.rag.evaluate import load_qa
from loraflow.services.know import knowledge
from loraflow.services.know.ask import AskRequest, ask
from loraflow.services.know.documents import ingest_sample_if_empty
from loraflow.services.runtime import build_runtime
from loraflow.text import repeated_ngram

# (repetition penalty, answer length): the old default first.
SETTINGS = [(1.0, 512), (1.1, 256), (1.2, 256), (1.3, 256)]
CITATION = re.compile(r"\[(\d+)\]")


def measure(rt, questions: list[str], penalty: float, limit: int) -> dict:
    def one(q: str):
        return ask(
            rt,
            AskRequest(query=q, repetition_penalty=penalty, max_new_tokens=limit, seed=7),
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, questions))
    seconds = time.perf_counter() - started
    tokens = [r.usage["completion_tokens"] for r in results]
    cited = [(int(n), len(r.source_documents)) for r in results for n in CITATION.findall(r.answer)]
    return {
        "repetition_penalty": penalty,
        "max_new_tokens": limit,
        "answers": len(results),
        "mean_tokens": round(sum(tokens) / len(tokens), 1),
        "cut_at_limit": round(sum(t >= limit for t in tokens) / len(tokens), 3),
        "looping": round(sum(repeated_ngram(r.answer) for r in results) / len(results), 3),
        "citations": len(cited),
        "citations_that_exist": round(sum(1 <= n <= k for n, k in cited) / len(cited), 3)
        if cited
        else None,
        "seconds_per_answer": round(seconds / len(results), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=8, help="English sample questions to ask")
    add_json_flag(ap)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    rt = build_runtime(Settings(data_dir=data))
    ingest_sample_if_empty(rt)
    questions = [r.question for r in load_qa(knowledge.sample_qa_path(), "en")][: args.questions]
    print(f"{len(questions)} questions, sampling at TEMPERATURE={rt.settings.temperature}, seed 7")
    print(
        f"{'penalty':>8} {'limit':>6} {'tokens':>7} {'cut':>6} {'loops':>6} "
        f"{'cites ok':>9} {'s/answer':>9}"
    )
    rows = []
    for penalty, limit in SETTINGS:
        row = measure(rt, questions, penalty, limit)
        rows.append(row)
        ok = row["citations_that_exist"]
        print(
            f"{penalty:8.2f} {limit:6d} {row['mean_tokens']:7.1f} {row['cut_at_limit']:6.2f} "
            f"{row['looping']:6.2f} {'-' if ok is None else f'{ok:.2f}':>9} "
            f"{row['seconds_per_answer']:9.2f}"
        )
    old = rows[0]
    ratios = {}
    for row in rows[1:]:
        label = f"rp {row['repetition_penalty']}, {row['max_new_tokens']} tokens"
        ratios[f"{label}: time per answer vs old default"] = (
            row["seconds_per_answer"] / old["seconds_per_answer"]
        )
    write_results(
        args.json,
        "generation_defaults",
        {"questions": len(questions), "temperature": rt.settings.temperature, "seed": 7},
        rows,
        ratios,
        baseline="repetition penalty 1.0, 512 tokens (the old default)",
        lower_is_better=list(ratios),
    )


if __name__ == "__main__":
    main()
