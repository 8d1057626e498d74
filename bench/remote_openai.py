"""Cost of the remote hop: chat through loraflow's OpenAI backend vs straight to the server.

One loraflow serves /v1 as the "vLLM"; a second one (REMOTE_BACKEND=openai, no local model)
forwards `remote/<model>` chats to it. Requests alternate between the two paths in one run,
so both see the same machine load; the ratio is loraflow-through-the-backend tokens/s over
direct tokens/s (1.0 = no overhead).

    .venv/bin/python bench/remote_openai.py --requests 6 --max-tokens 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from _results import add_json_flag, write_results
from _server import BenchServer

BASE = "bundled:smollm2"
PROMPT = [{"role": "user", "content": "Explain what a LoRA adapter is, step by step."}]


def chat(url: str, model: str, max_tokens: int, stream: bool) -> tuple[float, int]:
    """Seconds and completion tokens of one greedy, fixed-length chat."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    started = time.perf_counter()
    if stream:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
            r.raise_for_status()
            pieces = sum(1 for ln in r.iter_lines() if ln.startswith("data: {"))
        # The first event carries the role and the last the finish reason, no text.
        return time.perf_counter() - started, pieces - 2
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - started, r.json()["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6, help="Requests per path and mode.")
    parser.add_argument("--max-tokens", type=int, default=32)
    add_json_flag(parser)
    args = parser.parse_args()
    quiet = {"AUTO_INGEST_SAMPLE": "false", "ENABLE_UI": "false"}
    with BenchServer(quiet) as vllm:
        remote = {
            **quiet,
            "REMOTE_BACKEND": "openai",
            "OPENAI_BASE_URL": f"{vllm.url}/v1",
            "OPENAI_MODEL": BASE,
            "OPENAI_TIMEOUT": "600",
            "LOAD_LOCAL_MODEL": "false",
        }
        with BenchServer(remote) as app:
            paths = {"direct": (vllm.url, BASE), "loraflow": (app.url, f"remote/{BASE}")}
            for url, model in paths.values():
                chat(url, model, 4, False)  # warm-up: first-request costs stay out
            rows = []
            for stream in (False, True):
                tps: dict[str, list[float]] = {k: [] for k in paths}
                for _ in range(args.requests):
                    for label, (url, model) in paths.items():
                        seconds, tokens = chat(url, model, args.max_tokens, stream)
                        tps[label].append(tokens / seconds)
                for label, values in tps.items():
                    rows.append(
                        {
                            "path": label,
                            "stream": stream,
                            "tok_s_median": round(statistics.median(values), 2),
                            "requests": len(values),
                        }
                    )
    by = {(r["path"], r["stream"]): r["tok_s_median"] for r in rows}
    ratios = {
        "remote backend vs direct (non-stream)": by[("loraflow", False)] / by[("direct", False)],
        "remote backend vs direct (stream)": by[("loraflow", True)] / by[("direct", True)],
    }
    for r in rows:
        print(f"{r['path']:<9} stream={r['stream']!s:<5} {r['tok_s_median']:>7.2f} tok/s")
    for label, value in ratios.items():
        print(f"{label}: {value:.3f}x")
    write_results(
        args.json,
        "remote_openai",
        {"requests": args.requests, "max_tokens": args.max_tokens, "model": BASE},
        rows,
        ratios,
        baseline="direct",
        notes=["both servers share this machine's cores; the ratio is the hop's overhead"],
    )


if __name__ == "__main__":
    main()
