"""Many adapters at once: total tokens/s under the same concurrent load, in one run.

Compares loraflow's continuous-batching scheduler serving 1, 8 and 32 different LoRA adapters
(mixed in one batch, one adapter per row) with what a user would run instead: llama.cpp
(llama-cpp-python on the bundled Q4_1 GGUF, each adapter converted to a GGUF LoRA) answering
the same requests one at a time with each request's adapter applied, as Ollama does; and with
the naive way of the transformers engine (one request at a time, switching adapters). It
checks that the batched answers are identical to each adapter's answer alone.

    .venv/bin/python bench/multi_adapter.py                 # 1 vs 8 vs 32 adapters vs naive
    .venv/bin/python bench/multi_adapter.py --adapters 1 8 --requests 16 --tokens 32
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from _results import add_int8_prompts_flag, add_json_flag, write_results

from loraflow.config import Settings
from loraflow.engines import batching
from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import HFEngine, apply_local_precision
from loraflow.engines.hybrid import HybridEngine
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

REPO = Path(__file__).resolve().parents[1]
# Targets: mixed batches keep most of the single-adapter speed, beat the naive way 4x and
# llama.cpp answering one request at a time 3x.
TARGETS = {
    "RSS with 32 adapters / with 1": ("<=", 1.1),
    "8 adapters vs 1 (batched)": (">=", 0.9),
    "32 adapters vs 1 (batched)": (">=", 0.9),
    "8 adapters batched vs naive": (">=", 4.0),
    "32 adapters batched vs naive": (">=", 4.0),
    "8 adapters batched vs llama.cpp one at a time": (">=", 3.0),
    "32 adapters batched vs llama.cpp one at a time": (">=", 3.0),
    # LOCAL_ENGINE=hybrid under the same load: one request may go to llama.cpp, the rest batch.
    "hybrid vs batched (32 adapters)": (">=", 0.9),
}
PROMPTS = [
    "Explain what a LoRA adapter is.",
    "Write a short poem about the sea.",
    "List three uses of a vector database.",
    "How do I reset my password?",
    "Summarise the plot of a detective story in two sentences.",
    "What is continuous batching?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
]


def make_adapters(base_dir: Path, root: Path, count: int, targets: list[str], rank: int) -> None:
    """`count` random LoRA adapters (non-zero B, so each changes the output differently)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    for i in range(count):
        torch.manual_seed(100 + i)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                torch.nn.init.normal_(param, std=0.02)
        peft_model.save_pretrained(root / f"adapter-{i:02d}")


def llamacpp_engine(cache: Path, work: Path, names: list[str], threads: int) -> Any:
    """llama-cpp-python on the bundled GGUF with every adapter converted and attached."""
    from loraflow.adapters.gguf import export_gguf_adapter
    from loraflow.adapters.inspect import checksum
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    engine, warnings = load_llamacpp_engine(
        "bundled:smollm2",
        cache,
        None,
        threads=threads,
        export_lora=export_gguf_adapter,
        checksum=checksum,
        lora_cache_dir=work / "gguf-lora",
    )
    for name in names:
        engine.load_adapter(name, work / name)
    return engine


def run_load(engine: Any, jobs: list[tuple[str, str | None]], concurrency: int,
             params: GenerationParams) -> tuple[float, int, list[str]]:  # fmt: skip
    """Serve `jobs` with `concurrency` clients; (seconds, completion tokens, texts)."""
    texts = [""] * len(jobs)
    tokens = [0] * len(jobs)
    lock = threading.Lock()
    next_job = [0]

    def client() -> None:
        while True:
            with lock:
                i = next_job[0]
                next_job[0] += 1
            if i >= len(jobs):
                return
            prompt, adapter = jobs[i]
            msgs = [{"role": "user", "content": prompt}]
            result = engine.generate(msgs, params, adapter=adapter)
            texts[i], tokens[i] = result.text, result.completion_tokens

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, sum(tokens), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per scenario")
    ap.add_argument("--concurrency", type=int, default=32, help="clients sending at once")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--naive-requests", type=int, default=8, help="requests for the naive run")
    ap.add_argument(
        "--llamacpp-requests",
        type=int,
        default=16,
        help="requests for llama.cpp one at a time (0: skip it)",
    )
    ap.add_argument(
        "--transformers-decoder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the most-adapters load with LOCAL_DECODER=transformers",
    )
    ap.add_argument(
        "--prompts-one-by-one",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the most-adapters load with joining prompts prefilled one by one "
        "(as before they ran as one pass)",
    )
    ap.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per scenario")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--precision",
        default=Settings.model_fields["local_precision"].default,
        help="LOCAL_PRECISION of the engine (default: the setting's default; auto picks what "
        "this host measured faster)",
    )
    add_int8_prompts_flag(ap)
    add_json_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cache = REPO / ".cache" / "test-models"
    resolved = resolve_base_model("bundled:smollm2", cache)
    most = max(args.adapters)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-"))
    make_adapters(resolved.path, work, most, args.targets.split(","), args.rank)
    model, tokenizer = load_model_and_tokenizer(resolved)
    precision = apply_local_precision(
        model, args.precision, cache, tokenizer, int8_prompts=args.int8_prompts
    )
    setting = f"LOCAL_PRECISION={args.precision}, LOCAL_INT8_PROMPTS={args.int8_prompts}"
    print(f"engine precision: {precision} ({setting})", flush=True)
    engine = HFEngine(model, tokenizer, base_model_name=resolved.display_name)
    names = [f"adapter-{i:02d}" for i in range(most)]
    # Fixed-length answers, so every scenario decodes the same number of tokens.
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)

    def jobs(n_adapters: int, count: int) -> list[tuple[str, str | None]]:
        return [(PROMPTS[i % len(PROMPTS)], names[i % n_adapters]) for i in range(count)]

    # Resident memory with one adapter and with all of them, each after a full batch.
    engine.load_adapter(names[0], work / names[0])
    engine.enable_batching(max_batch=args.concurrency)
    run_load(engine, jobs(1, args.concurrency), args.concurrency, params)
    rss_one = psutil.Process().memory_info().rss / 2**20
    for name in names[1:]:
        engine.load_adapter(name, work / name)
    run_load(engine, jobs(most, args.concurrency), args.concurrency, params)
    rss_all = psutil.Process().memory_info().rss / 2**20
    engine.close()
    print(f"RSS: {rss_one:.0f} MB with 1 adapter, {rss_all:.0f} MB with {most} "
          f"({rss_all / rss_one:.3f}x)")  # fmt: skip
    llama = None
    if args.llamacpp_requests:
        llama = llamacpp_engine(cache, work, names[: max(args.adapters)], args.threads)
    load = f"{args.requests} requests x {args.tokens} tokens, {args.concurrency} at once"
    print(f"SmolLM2-135M, {args.threads} threads, LoRA r={args.rank} on {args.targets}; {load}")
    # Scenarios alternate round by round, so a change in machine load hits them all alike.
    secs = {n: 0.0 for n in [*args.adapters, 0, -1, -2, -3, -4]}
    toks = {n: 0 for n in [*args.adapters, 0, -1, -2, -3, -4]}
    llama_jobs = jobs(max(args.adapters), args.llamacpp_requests)
    texts: dict[int, list[str]] = {}
    naive_jobs = jobs(max(args.adapters), args.naive_requests)
    for _ in range(args.rounds):
        engine.enable_batching(max_batch=args.concurrency)
        run_load(engine, jobs(1, 2), 2, params)  # warm-up
        for n in args.adapters:
            s, t, texts[n] = run_load(engine, jobs(n, args.requests), args.concurrency, params)
            secs[n] += s
            toks[n] += t
            print(f"  round: {n:>2} adapter(s) {t / s:6.1f} tok/s", flush=True)
        if args.prompts_one_by_one:
            together = batching.PREFILL_TOKENS
            batching.PREFILL_TOKENS = 1  # every pass takes one prompt
            try:
                s, t, _ = run_load(engine, jobs(most, args.requests), args.concurrency, params)
            finally:
                batching.PREFILL_TOKENS = together
            secs[-4] += s
            toks[-4] += t
            print(f"  round: {most:>2} adapter(s), prompts one by one {t / s:6.1f} tok/s")
        if llama is not None:
            # LOCAL_ENGINE=hybrid over the same engines (closed through `engine` below).
            hybrid = HybridEngine(
                engine, llama, Settings.model_fields["hybrid_prompt_tokens"].default
            )
            s, t, _ = run_load(hybrid, jobs(most, args.requests), args.concurrency, params)
            secs[-3] += s
            toks[-3] += t
            print(f"  round: {most:>2} adapter(s), hybrid {t / s:6.1f} tok/s "
                  f"({hybrid.served['solo']} on llama.cpp)", flush=True)  # fmt: skip
            hybrid._solo_ops.shutdown()  # its thread; the engines are closed through `engine`
        engine.close()
        if args.transformers_decoder:
            # The same batch on transformers' forward (LOCAL_DECODER=transformers).
            engine.enable_batching(max_batch=args.concurrency, lean=False)
            s, t, _ = run_load(engine, jobs(most, args.requests), args.concurrency, params)
            secs[-2] += s
            toks[-2] += t
            print(f"  round: {most:>2} adapter(s), transformers decoder {t / s:6.1f} tok/s")
            engine.close()
        # Back to plain generate(), one request at a time.
        s, t, naive_texts = run_load(engine, naive_jobs, 1, params)
        secs[0] += s
        toks[0] += t
        print(f"  round: naive        {t / s:6.1f} tok/s", flush=True)
        if llama is not None:
            s, t, _ = run_load(llama, llama_jobs, 1, params)
            secs[-1] += s
            toks[-1] += t
            print(f"  round: llama.cpp    {t / s:6.1f} tok/s", flush=True)
    rates = {n: toks[n] / secs[n] for n in secs if secs[n]}
    for n in args.adapters:
        print(f"loraflow batched, {n:>2} adapter(s): {rates[n]:7.1f} tok/s "
              f"({toks[n]} tok, {secs[n]:.1f}s)")  # fmt: skip
    naive = rates[0]
    print(f"naive, one request at a time:   {naive:7.1f} tok/s ({toks[0]} tok, {secs[0]:.1f}s)")
    if -1 in rates:
        print(f"llama.cpp, one at a time:       {rates[-1]:7.1f} tok/s "
              f"({toks[-1]} tok, {secs[-1]:.1f}s)")  # fmt: skip

    # The batched answers must equal each adapter's answer alone (greedy): alone through the
    # same batching engine (a batch of one), and alone through plain generate(). With
    # quantized base weights the two code paths can round differently (docs/BENCHMARKS.md).
    batched = texts[max(args.adapters)][: args.naive_requests]
    engine.enable_batching(max_batch=args.concurrency)
    _, _, alone_texts = run_load(engine, naive_jobs, 1, params)
    engine.close()
    same_engine = sum(a == b for a, b in zip(batched, alone_texts, strict=True))
    same = sum(a == b for a, b in zip(batched, naive_texts, strict=True))
    print(
        f"identical to the adapter alone in the batching engine: {same_engine}/{len(alone_texts)}"
    )
    print(f"identical to the adapter alone (plain generate()): {same}/{len(naive_texts)}")
    one = rates[args.adapters[0]]
    for n in args.adapters[1:]:
        print(f"ratio {n} adapters / {args.adapters[0]} adapter: {rates[n] / one:.2f}x")
    for n in args.adapters:
        print(f"ratio loraflow ({n} adapters) / naive: {rates[n] / naive:.2f}x")

    def row(scenario: str, key: int, adapters: int) -> dict[str, Any]:
        return {"scenario": scenario, "adapters": adapters, "tokens": toks[key],
                "seconds": round(secs[key], 2), "tok_per_s": round(rates[key], 2),
                "vs_naive": round(rates[key] / naive, 3)}  # fmt: skip

    rows = [row(f"batched, {n} adapter(s)", n, n) for n in args.adapters]
    rows.append(row("naive, one at a time", 0, most))
    if -1 in rates:
        rows.append(row("llama.cpp, one at a time", -1, most))
    if -2 in rates:
        rows.append(row("batched, transformers decoder", -2, most))
        print(f"lean decoder vs transformers decoder ({most} adapters): "
              f"{rates[most] / rates[-2]:.2f}x")  # fmt: skip
    if -3 in rates:
        rows.append(row("hybrid (LOCAL_ENGINE=hybrid)", -3, most))
        print(f"hybrid vs batched ({most} adapters): {rates[-3] / rates[most]:.2f}x")
    if -4 in rates:
        rows.append(row("batched, prompts prefilled one by one", -4, most))
        print(f"prompts together vs one by one ({most} adapters): "
              f"{rates[most] / rates[-4]:.2f}x")  # fmt: skip
    ratios = {f"{n} adapters batched vs naive": rates[n] / naive for n in args.adapters}
    if -4 in rates:
        ratios[f"prompts together vs one by one ({most} adapters)"] = rates[most] / rates[-4]
    if -3 in rates:
        ratios[f"hybrid vs batched ({most} adapters)"] = rates[-3] / rates[most]
    ratios[f"RSS with {most} adapters / with 1"] = rss_all / rss_one
    if -2 in rates:
        ratios[f"lean vs transformers decoder ({most} adapters)"] = rates[most] / rates[-2]
    if -1 in rates:
        for n in args.adapters:
            ratios[f"{n} adapters batched vs llama.cpp one at a time"] = rates[n] / rates[-1]
            print(f"ratio loraflow ({n} adapters) / llama.cpp one at a time: "
                  f"{rates[n] / rates[-1]:.2f}x")  # fmt: skip
    for n in args.adapters[1:]:
        ratios[f"{n} adapters vs {args.adapters[0]} (batched)"] = rates[n] / one
    config = {k: getattr(args, k) for k in ("adapters", "requests", "concurrency", "tokens",
              "naive_requests", "targets", "rank", "rounds", "threads")}  # fmt: skip
    config["precision"] = f"{precision} ({setting})"
    write_results(
        args.json,
        "multi_adapter",
        config,
        rows,
        ratios,
        baseline="naive: one request at a time, switching adapters",
        targets={k: v for k, v in TARGETS.items() if k in ratios},
        notes=[
            f"batched answers identical to the adapter alone: {same_engine}/{len(alone_texts)} "
            f"in the batching engine, {same}/{len(naive_texts)} against plain generate()",
            f"resident memory after a {args.concurrency}-request batch: {rss_one:.0f} MB with "
            f"1 adapter attached, {rss_all:.0f} MB with {most}",
        ],
    )


if __name__ == "__main__":
    main()
