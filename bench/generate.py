"""Batch-1 generation speed: loraflow's engines vs raw llama-cpp-python, in one run.

Both engines load the bundled SmolLM2-135M-Instruct (transformers: the fp32 safetensors copy;
llama.cpp: the shipped Q4_1 GGUF) and answer the same chat prompts greedily, one request at a
time, with a fixed number of new tokens; then again with the same random LoRA adapter applied
(PEFT in transformers, converted to GGUF for llama.cpp). Raw llama-cpp-python (its own token
loop on the same GGUF, no loraflow) is the baseline loraflow's llama.cpp engine must keep up
with; LOCAL_ENGINE=hybrid (the default: the two engines as one, llama.cpp answering a lone
request with a short prompt) is measured beside them; `--http` also measures `loraflow serve`
with LOCAL_ENGINE=llamacpp over HTTP.

    .venv/bin/python bench/generate.py                      # 64 tokens x 4 prompts x 2 rounds
    .venv/bin/python bench/generate.py --tokens 128 --http --json bench/results/generate.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _results import add_int8_prompts_flag, add_json_flag, write_results
from _server import MODEL_CACHE, BenchServer
from precision import HELD_OUT

from loraflow.adapters.gguf import export_gguf_adapter
from loraflow.adapters.inspect import checksum
from loraflow.config import Settings
from loraflow.engines.base import GenerationParams
from loraflow.engines.chat import render_prompt
from loraflow.engines.hf import HFEngine, apply_local_precision
from loraflow.engines.hybrid import HybridEngine
from loraflow.engines.llamacpp_load import load_llamacpp_engine
from loraflow.hardware import release_cpu_pool
from loraflow.models.bundled import smollm2_gguf_path
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

PROMPTS = [
    "Explain what a LoRA adapter is.",
    "Write a short poem about the sea.",
    "How do I reset my password?",
    "Why is the sky blue?",
]
ADAPTER = "bench-lora"
# Issue #7: loraflow's llama.cpp path keeps up with raw llama-cpp-python, and an adapter
# costs it little.
TARGETS = {
    # The configuration `bash scripts/run.sh` starts (LOCAL_ENGINE=hybrid: a lone request goes
    # to llama.cpp) against what a user would run instead: issue #21's batch-1 goal.
    "default engine (hybrid) vs raw llama-cpp-python": (">=", 0.8),
    "default engine (hybrid)+LoRA vs raw llama-cpp-python+LoRA": (">=", 0.8),
    "llama.cpp engine vs raw llama-cpp-python": (">=", 0.9),
    "HTTP (LOCAL_ENGINE=llamacpp) vs raw llama-cpp-python": (">=", 0.9),
    "llama.cpp engine: LoRA vs base": (">=", 0.85),
}
# What quantized weights may cost: the GGUF lone requests are answered from, and the engine's
# precision where LOCAL_PRECISION=auto picks int8 or bf16 (each "... perplexity / fp32").
MAX_PPL = ("<=", 1.05)


def make_adapter(base_dir: Path, dest: Path, targets: list[str], rank: int) -> None:
    """A LoRA whose random, non-zero weights change the answers (as a trained one would)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.02)
    peft_model.save_pretrained(dest)


def raw_llama(
    template: object, threads: int, tokens: int, reset: bool = False, lora: Path | None = None
) -> Callable[[str], int]:
    """Raw llama-cpp-python on its own copy of the GGUF: tokenize, greedy token loop, decode.

    By default its prompt cache is reused as llama-cpp-python does; `reset` re-evaluates every
    prompt, as loraflow's engine does (so answers never depend on the request before).
    """
    from llama_cpp import Llama

    extra = {"lora_path": str(lora)} if lora is not None else {}
    llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=0, n_threads=threads,
                n_threads_batch=threads, verbose=False, **extra)  # fmt: skip

    def run(prompt: str) -> int:
        text = render_prompt(template, [{"role": "user", "content": prompt}])
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if reset:
            llm.reset()
        out = b""
        for n, token in enumerate(llm.generate(ids, temp=0.0, min_p=0.0), start=1):
            out += llm.detokenize([token])
            if n >= tokens:
                break
        return n

    return run


def held_out_quality(
    model: object, precision: str, tokenizer: object, threads: int, resolved: object
) -> dict[str, tuple[float, float]]:
    """{"fp32" | the engine's precision | "<it> as one prompt" | "GGUF": (perplexity, share
    of greedy next tokens equal to fp32's)} on the held-out text of bench/precision.py: the
    price of the engine's quantized base weights, decoding token by token and evaluating
    the whole text as one prompt (its prompt path: int8 with LOCAL_INT8_PROMPTS, else fp32
    but for the LM head), and of answering lone requests from the 4-bit GGUF."""
    import numpy as np
    from llama_cpp import Llama
    from precision import decode_quality

    text = HELD_OUT.read_text("utf-8")
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :512]  # type: ignore[operator]
    skip = 16  # the first tokens have too little context to score
    target = ids[0, skip:]
    exact = model
    if precision != "fp32":
        exact, _ = load_model_and_tokenizer(resolved)  # type: ignore[arg-type]
    with torch.inference_mode():
        fp32 = exact(input_ids=ids).logits[0].float()[skip - 1 : -1]  # type: ignore[operator]
    del exact
    llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=1024, logits_all=True,
                n_threads=threads, verbose=False)  # fmt: skip
    try:
        llm.eval(ids[0].tolist())
        gguf = torch.tensor(np.array(llm.scores[: ids.shape[1]]), dtype=torch.float32)
    finally:
        llm.close()
    gguf = gguf[skip - 1 : -1]
    greedy = fp32.argmax(-1)

    def scored(logits: torch.Tensor) -> tuple[float, float]:
        ppl = float(torch.nn.functional.cross_entropy(logits, target).exp())
        return ppl, float((logits.argmax(-1) == greedy).float().mean())

    out = {"fp32": scored(fp32), "GGUF": scored(gguf)}
    if precision != "fp32":
        # As the engine decodes: a short prompt, then one token per step through the cache.
        ppl, tokens = decode_quality(model, ids, prompt=skip)
        out[precision] = (ppl, float((tokens == greedy).float().mean()))
        with torch.inference_mode():
            whole = model(input_ids=ids).logits[0].float()[skip - 1 : -1]  # type: ignore[operator]
        out[f"{precision} as one prompt"] = scored(whole)
    return out


def engine_run(engine: object, params: GenerationParams, adapter: str | None) -> Callable:
    def run(prompt: str) -> int:
        messages = [{"role": "user", "content": prompt}]
        return engine.generate(messages, params, adapter=adapter).completion_tokens  # type: ignore[attr-defined]

    return run


def http_run(url: str, model: str, tokens: int) -> Callable[[str], int]:
    import httpx

    client = httpx.Client(base_url=url, timeout=600)

    def run(prompt: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": tokens, "temperature": 0, "ignore_eos": True}  # fmt: skip
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    return run


def measure(runs: dict[str, Callable[[str], int]], rounds: int) -> dict[str, tuple[int, float]]:
    """(tokens, seconds) per scenario; scenarios take turns prompt by prompt, after a warm-up."""
    totals = {name: (0, 0.0) for name in runs}
    for run in runs.values():
        run(PROMPTS[0])
    for r in range(rounds):
        for prompt in PROMPTS:
            # The order flips every round, so load changes on the machine hit both sides.
            order = list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]
            for name, run in order:
                started = time.perf_counter()
                n = run(prompt)
                tok, sec = totals[name]
                totals[name] = (tok + n, sec + time.perf_counter() - started)
                # llama.cpp runs on this thread with torch's OpenMP runtime (the one copy
                # loaded): its workers go between runs, as a separate Ollama process's would
                # not be there to slow the engine's thread (hardware.release_cpu_pool).
                release_cpu_pool()
        rates = ", ".join(f"{k} {t / s:.1f}" for k, (t, s) in totals.items())
        print(f"  after round {r + 1}: {rates} tok/s", flush=True)
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the prompts")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--http", action="store_true", help="also measure a real loraflow server")
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

    resolved = resolve_base_model("bundled:smollm2", MODEL_CACHE)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-generate-"))
    make_adapter(resolved.path, work / "adapters" / ADAPTER, args.targets.split(","), args.rank)
    model, tokenizer = load_model_and_tokenizer(resolved)
    precision = apply_local_precision(
        model, args.precision, MODEL_CACHE, tokenizer, int8_prompts=args.int8_prompts
    )
    setting = f"LOCAL_PRECISION={args.precision}, LOCAL_INT8_PROMPTS={args.int8_prompts}"
    print(f"engine precision: {precision} ({setting})", flush=True)
    # Before any adapter is attached: PEFT's layers would apply it to the base's forward.
    scores = held_out_quality(model, precision, tokenizer, args.threads, resolved)
    fp32_ppl = scores["fp32"][0]
    quality = f"held-out perplexity: fp32 {fp32_ppl:.3f}" + "".join(
        f"; {k} {ppl:.3f} ({ppl / fp32_ppl:.3f}x, greedy next tokens equal to fp32's {eq:.1%})"
        for k, (ppl, eq) in scores.items()
        if k != "fp32"
    )
    print(quality, flush=True)
    hf = HFEngine(model, tokenizer, base_model_name=resolved.display_name)
    hf.load_adapter(ADAPTER, work / "adapters" / ADAPTER)
    # As `loraflow serve` runs it by default: every request through the continuous batch.
    hf.enable_batching(16)
    llama, warnings = load_llamacpp_engine(
        "bundled:smollm2",
        MODEL_CACHE,
        work / "adapters",
        threads=args.threads,
        export_lora=export_gguf_adapter,
        checksum=checksum,
        lora_cache_dir=work / "gguf",
    )
    assert not warnings, warnings
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)
    print(f"SmolLM2-135M, batch 1, greedy, {args.tokens} new tokens, {args.threads} threads, "
          f"LoRA r={args.rank} on {args.targets}")  # fmt: skip
    # LOCAL_ENGINE=hybrid over the same two engines (not closed on its own: they are).
    hybrid = HybridEngine(hf, llama, Settings.model_fields["hybrid_prompt_tokens"].default)
    runs = {
        "transformers": engine_run(hf, params, None),
        "hybrid": engine_run(hybrid, params, None),
        "llama.cpp": engine_run(llama, params, None),
        "raw llama-cpp-python": raw_llama(llama.template, args.threads, args.tokens),
        "raw, prompt re-evaluated": raw_llama(llama.template, args.threads, args.tokens, True),
        "transformers+LoRA": engine_run(hf, params, ADAPTER),
        "hybrid+LoRA": engine_run(hybrid, params, ADAPTER),
        "llama.cpp+LoRA": engine_run(llama, params, ADAPTER),
        "raw llama-cpp-python+LoRA": raw_llama(
            llama.template, args.threads, args.tokens, lora=next((work / "gguf").rglob("*.gguf"))
        ),
    }
    totals = measure(runs, args.rounds)
    if args.http:
        # The in-process engines are freed first, so the server has the cores to itself.
        hf.close()
        llama.close()
        del hf, model
        env = {"LOCAL_ENGINE": "llamacpp", "LLAMACPP_THREADS": str(args.threads),
               "LORA_MODEL_PATH": str(work / "adapters"), "AUTO_INGEST_SAMPLE": "false",
               "ENABLE_UI": "false"}  # fmt: skip
        with BenchServer(env) as server:
            http = {"HTTP (LOCAL_ENGINE=llamacpp)": http_run(server.url, "base", args.tokens),
                    "raw llama-cpp-python (beside HTTP)": runs["raw llama-cpp-python"]}  # fmt: skip
            totals.update(measure(http, args.rounds))

    rates = {k: t / s for k, (t, s) in totals.items()}
    for k, rate in rates.items():
        print(f"{k:<38} {rate:7.1f} tok/s ({totals[k][0]} tok, {totals[k][1]:.1f}s)")
    ratios = {
        "default engine (hybrid) vs raw llama-cpp-python": rates["hybrid"]
        / rates["raw llama-cpp-python"],
        "default engine (hybrid)+LoRA vs raw llama-cpp-python+LoRA": rates["hybrid+LoRA"]
        / rates["raw llama-cpp-python+LoRA"],
        "transformers engine vs raw llama-cpp-python": rates["transformers"]
        / rates["raw llama-cpp-python"],
        "transformers engine+LoRA vs raw llama-cpp-python+LoRA": rates["transformers+LoRA"]
        / rates["raw llama-cpp-python+LoRA"],
        "llama.cpp vs transformers (base)": rates["llama.cpp"] / rates["transformers"],
        "llama.cpp vs transformers (LoRA)": rates["llama.cpp+LoRA"] / rates["transformers+LoRA"],
        "llama.cpp engine vs raw llama-cpp-python": rates["llama.cpp"]
        / rates["raw llama-cpp-python"],
        "llama.cpp engine vs raw, prompt re-evaluated": rates["llama.cpp"]
        / rates["raw, prompt re-evaluated"],
        "llama.cpp engine: LoRA vs base": rates["llama.cpp+LoRA"] / rates["llama.cpp"],
        "transformers engine: LoRA vs base": rates["transformers+LoRA"] / rates["transformers"],
    }
    for k, (ppl, _) in scores.items():
        if k != "fp32":
            ratios[f"{k} perplexity / fp32"] = ppl / fp32_ppl
    if args.http:
        ratios["HTTP (LOCAL_ENGINE=llamacpp) vs raw llama-cpp-python"] = (
            rates["HTTP (LOCAL_ENGINE=llamacpp)"] / rates["raw llama-cpp-python (beside HTTP)"]
        )
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}x")
    rows = [{"scenario": k, "tokens": totals[k][0], "seconds": round(totals[k][1], 2),
             "tok_per_s": round(r, 2)} for k, r in rates.items()]  # fmt: skip
    config = {k: getattr(args, k) for k in ("tokens", "rounds", "threads", "targets", "rank",
              "http")}  # fmt: skip
    config["precision"] = f"{precision} ({setting})"
    write_results(
        args.json,
        "generate",
        config,
        rows,
        ratios,
        baseline="raw llama-cpp-python, what a user would run instead; the engines as "
        "`loraflow serve` runs them (transformers: continuous batching, lean decoder, "
        "LOCAL_PRECISION as given)",
        targets={
            **{k: v for k, v in TARGETS.items() if k in ratios},
            **{k: MAX_PPL for k in ratios if k.endswith("perplexity / fp32")},
        },
        notes=["batch 1, greedy, fixed-length answers (ignore_eos)", quality],
        lower_is_better=[k for k in ratios if "perplexity" in k],
    )


if __name__ == "__main__":
    main()
