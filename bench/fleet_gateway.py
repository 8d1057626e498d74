"""Cost of the fleet gateway: concurrent chats through loraflow's fleet vs straight to a replica.

One loraflow serves /v1 as the replica (a vLLM stand-in); a second one (REMOTE_BACKEND=openai,
OPENAI_BASE_URLS naming that replica, no local model) is the gateway, which balances, tracks
requests in flight and would retry. The same concurrent load is sent both ways, in alternating
rounds so both see the same machine load; the ratio is gateway tokens/s over direct tokens/s
(target: at least 0.95).

    .venv/bin/python bench/fleet_gateway.py --concurrency 4 --rounds 3 --max-tokens 16
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from _results import add_json_flag, write_results
from _server import BenchServer

BASE = "bundled:smollm2"
PROMPT = [{"role": "user", "content": "Explain what a LoRA adapter is, step by step."}]


def one(client: httpx.Client, model: str, max_tokens: int) -> int:
    """Completion tokens of one greedy, fixed-length chat."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def load(url: str, model: str, concurrency: int, per_client: int, max_tokens: int) -> float:
    """Tokens per second of `concurrency` clients sending `per_client` chats each."""

    def client_run(_: int) -> int:
        with httpx.Client(base_url=url, timeout=600) as c:
            return sum(one(c, model, max_tokens) for _ in range(per_client))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(client_run, range(concurrency)))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4, help="Clients at once.")
    parser.add_argument("--per-client", type=int, default=2, help="Chats per client a round.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per path.")
    parser.add_argument("--max-tokens", type=int, default=16)
    add_json_flag(parser)
    args = parser.parse_args()
    quiet = {"AUTO_INGEST_SAMPLE": "false", "ENABLE_UI": "false"}
    with BenchServer(quiet) as replica:
        gateway_env = {
            **quiet,
            "REMOTE_BACKEND": "openai",
            "OPENAI_BASE_URLS": f"{replica.url}/v1",
            "OPENAI_MODEL": BASE,
            "OPENAI_TIMEOUT": "600",
            "LOAD_LOCAL_MODEL": "false",
        }
        with BenchServer(gateway_env) as gateway:
            paths = {"direct": (replica.url, BASE), "gateway": (gateway.url, f"remote/{BASE}")}
            for url, model in paths.values():
                load(url, model, 1, 1, 4)  # warm-up: first-request costs stay out
            tps: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(args.rounds):
                for label, (url, model) in paths.items():
                    tps[label].append(
                        load(url, model, args.concurrency, args.per_client, args.max_tokens)
                    )
    rows = [
        {"path": label, "tok_s_mean": round(sum(v) / len(v), 2), "rounds": len(v)}
        for label, v in tps.items()
    ]
    by = {r["path"]: r["tok_s_mean"] for r in rows}
    ratios = {"gateway vs direct": by["gateway"] / by["direct"]}
    for r in rows:
        print(f"{r['path']:<8} {r['tok_s_mean']:>7.2f} tok/s ({r['rounds']} rounds)")
    print(f"gateway vs direct: {ratios['gateway vs direct']:.3f}x (target >= 0.95)")
    write_results(
        args.json,
        "fleet_gateway",
        {
            "concurrency": args.concurrency,
            "per_client": args.per_client,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "model": BASE,
        },
        rows,
        ratios,
        baseline="direct",
        notes=["the gateway and the replica share this machine's cores"],
    )


if __name__ == "__main__":
    main()
