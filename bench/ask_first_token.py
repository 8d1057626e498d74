"""Time to the first answer token of a streamed `/ask` on the sample knowledge base.

Starts `loraflow serve` on the embedded defaults (the sample knowledge base ingested, the
bundled model, the lean decoder) and asks the sample questions with `"stream": true`; for each
it takes the time to the `sources` line (retrieval done) and to the first `text` line (the
prompt prefilled and a first token decoded). The same questions then go to a server with
LOCAL_DECODER=transformers (no reuse of the shared prompt prefix), the way it ran before.

    .venv/bin/python bench/ask_first_token.py
    .venv/bin/python bench/ask_first_token.py --rounds 3 --json bench/results/ask_first_token.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from _results import add_json_flag, write_results
from _server import BenchServer

QUESTIONS = [
    "How do I switch to Ollama without restarting?",
    "How do I train a LoRA adapter on my own data?",
    "What does the health endpoint report?",
    "How do I back up and restore the data directory?",
    "Which vector stores are supported?",
    "How do I deploy an adapter with a canary?",
]
TARGETS = {"first token p50 s (lean)": ("<=", 1.0)}


def ask(client: httpx.Client, question: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to sources, seconds to first text, prompt tokens) of one streamed /ask."""
    body = {"query": question, "stream": True, "max_new_tokens": tokens}
    started = time.perf_counter()
    sources = first = None
    prompt_tokens = 0
    with client.stream("POST", "/ask", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            item = json.loads(line)
            now = time.perf_counter() - started
            if item["type"] == "sources" and sources is None:
                sources = now
            elif item["type"] == "text" and first is None:
                first = now
            elif item["type"] == "done":
                prompt_tokens = int((item.get("usage") or {}).get("prompt_tokens") or 0)
    assert sources is not None and first is not None, "the answer streamed no text"
    return sources, first, prompt_tokens


def measure(
    decoder: str, rounds: int, tokens: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    settings = {"LOCAL_DECODER": decoder, "ENABLE_UI": "false", **(env or {})}
    with BenchServer(settings) as server:
        client = httpx.Client(base_url=server.url, timeout=600)
        ask(client, "warm-up question", tokens)
        firsts, sources, prompts = [], [], []
        for _ in range(rounds):
            for q in QUESTIONS:
                s, f, p = ask(client, q, tokens)
                sources.append(s)
                firsts.append(f)
                prompts.append(p)
        return {
            "first_token_p50_s": round(statistics.median(firsts), 3),
            "first_token_max_s": round(max(firsts), 3),
            "retrieval_p50_s": round(statistics.median(sources), 3),
            "prefill_p50_s": round(
                statistics.median(f - s for f, s in zip(firsts, sources, strict=True)), 3
            ),
            "prompt_tokens_p50": statistics.median(prompts),
            "asks": len(firsts),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="passes over the questions")
    ap.add_argument("--tokens", type=int, default=8, help="max_new_tokens of each answer")
    ap.add_argument(
        "--fp32-prompts",
        action="store_true",
        help="also measure the lean decoder with LOCAL_INT8_PROMPTS=false (where int8 serves, "
        "prompts then evaluate with the fp32 weights)",
    )
    add_json_flag(ap)
    args = ap.parse_args()
    results = {d: measure(d, args.rounds, args.tokens) for d in ("lean", "transformers")}
    if args.fp32_prompts:
        off = {"LOCAL_INT8_PROMPTS": "false"}
        results["lean, fp32 prompts"] = measure("lean", args.rounds, args.tokens, off)
    for decoder, r in results.items():
        print(f"{decoder:<13} first token p50 {r['first_token_p50_s']:.3f} s (max "
              f"{r['first_token_max_s']:.3f}), retrieval p50 {r['retrieval_p50_s']:.3f} s, "
              f"prefill + first token p50 {r['prefill_p50_s']:.3f} s, "
              f"prompt {r['prompt_tokens_p50']:.0f} tokens")  # fmt: skip
    lean, old = results["lean"], results["transformers"]
    ratios = {
        "first token p50 s (lean)": lean["first_token_p50_s"],
        "prefill speed-up (transformers / lean)": old["prefill_p50_s"] / lean["prefill_p50_s"],
    }
    if "lean, fp32 prompts" in results:
        fp32 = results["lean, fp32 prompts"]
        ratios["first token speed-up (fp32 prompts / default)"] = (
            fp32["first_token_p50_s"] / lean["first_token_p50_s"]
        )
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")
    rows = [{"decoder": d, **r} for d, r in results.items()]
    write_results(
        args.json,
        "ask_first_token",
        {"rounds": args.rounds, "tokens": args.tokens, "questions": len(QUESTIONS)},
        rows,
        ratios,
        baseline="LOCAL_DECODER=transformers",
        targets=TARGETS,
        notes=["streamed /ask on the sample knowledge base, embedded defaults otherwise"],
    )


if __name__ == "__main__":
    main()
