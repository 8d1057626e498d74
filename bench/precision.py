"""CPU precision of the local engine: fp32 vs bf16 vs dynamic int8 base linears, in one run.

Quality: perplexity of the bundled SmolLM2-135M-Instruct on a held-out text (loraflow's own
troubleshooting doc, never trained on) decoded token by token as serving does (a short prompt,
then one token per step through the KV cache), and the share of positions whose greedy token
equals fp32's. Speed: tokens/s of the engine at batch 1 (one request at a time) and at batch
32 (32 concurrent requests over 8 LoRA adapters, continuous batching, mixed adapters per
batch), each precision beside fp32 round by round. Prints the host's capability first: the
ratios differ by CPU kind (AVX2 vs AVX-512 BF16/VNNI).

    .venv/bin/python bench/precision.py                       # fp32 vs int8 vs bf16
    .venv/bin/python bench/precision.py --precisions fp32 int8 --json bench/results/precision.json
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from _results import add_int8_prompts_flag, add_json_flag, write_results
from _server import MODEL_CACHE

from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import HFEngine
from loraflow.hardware import (
    auto_serving_kinds,
    host_profile,
    int8_companion,
    serving_precision,
)
from loraflow.models.cpu_precision import (
    CALIBRATION_HELD_OUT,
    activation_ranges,
    apply_cpu_precision,
    calibration_batches,
)
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "src" / "loraflow" / "sample_data" / "docs" / CALIBRATION_HELD_OUT
PROMPTS = [
    "Explain what a LoRA adapter is.",
    "Write a short poem about the sea.",
    "List three uses of a vector database.",
    "How do I reset my password?",
]
# Issue #30: a quantized path may cost at most 5% perplexity.
MAX_PPL = 1.05


def speed_targets(auto: str, batch: int) -> dict[str, tuple[str, float]]:
    """Issue #30's speed goals, for the precision `auto` picks on this host (none on a host
    where it keeps fp32: there no path may be slower than fp32, which is fp32 itself)."""
    if auto == "fp32":
        return {}
    return {
        f"{auto} vs fp32 tok/s, batch 1": (">=", 3.0),
        f"{auto} vs fp32 tok/s, batch {batch} mixed adapters": (">=", 3.0),
    }


def make_adapters(base: Path, root: Path, count: int) -> list[str]:
    """`count` random LoRA adapters (r=16 on q,v) that really change the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(count):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
        )
        torch.manual_seed(i)
        for name, param in peft.named_parameters():
            if "lora_" in name:
                torch.nn.init.normal_(param, std=0.02)
        peft.save_pretrained(root / f"adapter-{i}")
        names.append(f"adapter-{i}")
    return names


def decode_quality(model: Any, ids: torch.Tensor, prompt: int) -> tuple[float, torch.Tensor]:
    """(perplexity, greedy token per position) decoding `ids` one token at a time."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True)
        logits = [out.logits[0, -1]]
        for i in range(prompt, ids.shape[1] - 1):
            out = model(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
    stacked = torch.stack(logits)
    loss = torch.nn.functional.cross_entropy(stacked, ids[0, prompt:])
    return float(loss.exp()), stacked.argmax(-1)


def serve(engine: HFEngine, jobs: list[tuple[str, str | None]], concurrency: int,
          params: GenerationParams) -> tuple[float, int, list[str]]:  # fmt: skip
    """Serve `jobs` with `concurrency` clients; (seconds, completion tokens, texts)."""
    texts, tokens = [""] * len(jobs), [0] * len(jobs)
    lock, nxt = threading.Lock(), [0]

    def client() -> None:
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(jobs):
                return
            prompt, adapter = jobs[i]
            result = engine.generate_text(prompt, params, adapter)
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
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "int8", "bf16"],
        help="fp32, bf16, int8 (calibrated, with the companion this host's engine picks), "
        "int8+fp32, int8+bf16; add +kept for int8 uncalibrated (LM head, down_proj kept)",
    )
    add_int8_prompts_flag(ap)
    ap.add_argument("--ppl-tokens", type=int, default=192, help="held-out tokens scored")
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per request")
    ap.add_argument("--batch1-requests", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="concurrent requests (batch size)")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_json_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    precisions = list(dict.fromkeys(["fp32", *args.precisions]))

    work = Path(tempfile.mkdtemp(prefix="lf-bench-precision-"))
    profile = host_profile(work)
    print(f"micro-benchmark ({profile['bench_s']} s): speed-ups vs fp32 {profile['speedup']}")
    auto = serving_precision("auto", profile, auto_serving_kinds(profile))
    print(f"auto would pick: serving {auto}")
    resolved = resolve_base_model("bundled:smollm2", MODEL_CACHE)
    names = make_adapters(resolved.path, work, args.adapters)
    engines: dict[str, HFEngine] = {}
    for p in precisions:
        model, tokenizer = load_model_and_tokenizer(resolved)
        # "int8" is what LOCAL_PRECISION=int8 runs on this host (its companion picked as the
        # engine picks it); "int8+fp32" / "int8+bf16" name the companion.
        kind, *rest = p.split("+")
        companion = next((t for t in rest if t != "kept"), "")
        if kind == "int8" and not companion:
            companion = int8_companion(work)  # the profile measured above, read back
        # As the engine loads it: int8 calibrated on a fixed text (every linear int8);
        # "int8+kept" is the uncalibrated form that keeps the LM head and down projections.
        ranges = None
        if kind == "int8" and "kept" not in rest:
            ranges = activation_ranges(model, calibration_batches(tokenizer))
        apply_cpu_precision(
            model, kind, companion or "fp32", ranges, int8_prompts=args.int8_prompts
        )
        engines[p] = HFEngine(model, tokenizer, base_model_name=resolved.display_name)
        for name in names:
            engines[p].load_adapter(name, work / name)

    tokenizer = engines["fp32"].tokenizer
    ids = tokenizer(HELD_OUT.read_text("utf-8"), return_tensors="pt")["input_ids"]
    ids = ids[:, : args.ppl_tokens]
    quality: dict[str, tuple[float, torch.Tensor]] = {}
    for p, engine in engines.items():
        quality[p] = decode_quality(engine._base, ids, prompt=16)
        ppl, greedy = quality[p]
        agree = float((greedy == quality["fp32"][1]).float().mean())
        print(f"{p:>5}: perplexity {ppl:.3f} ({ppl / quality['fp32'][0]:.3f}x fp32), "
              f"greedy tokens equal to fp32's {agree:.1%}", flush=True)  # fmt: skip

    params = GenerationParams(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)
    single = [(PROMPTS[i % len(PROMPTS)], None) for i in range(args.batch1_requests)]
    mixed = [(PROMPTS[i % len(PROMPTS)], names[i % len(names)]) for i in range(args.batch)]
    speed: dict[str, dict[str, list[float]]] = {p: {"b1": [0, 0], "b32": [0, 0]} for p in engines}
    texts: dict[str, list[str]] = {}
    for r in range(args.rounds):
        # Precisions alternate round by round (order flipped), so load changes hit all alike.
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for p in order:
            engine = engines[p]
            # The default configuration (`scripts/run.sh`): continuous batching on the lean
            # decoder, for a lone request as for many.
            engine.enable_batching(max_batch=args.batch)
            serve(engine, mixed[:2], 2, params)  # warm-up
            s, t, _ = serve(engine, single, 1, params)
            speed[p]["b1"][0] += s
            speed[p]["b1"][1] += t
            s, t, texts[p] = serve(engine, mixed, args.batch, params)
            engine.close()
            speed[p]["b32"][0] += s
            speed[p]["b32"][1] += t
            print(f"  round {r + 1} {p:>5}: batch 1 {speed[p]['b1'][1] / speed[p]['b1'][0]:.1f}"
                  f" tok/s, batch {args.batch} {speed[p]['b32'][1] / speed[p]['b32'][0]:.1f}"
                  " tok/s (cumulative)", flush=True)  # fmt: skip

    rows, ratios = [], {}
    base_ppl = quality["fp32"][0]
    for p in engines:
        b1 = speed[p]["b1"][1] / speed[p]["b1"][0]
        b32 = speed[p]["b32"][1] / speed[p]["b32"][0]
        same = sum(a == b for a, b in zip(texts[p], texts["fp32"], strict=True))
        agree = float((quality[p][1] == quality["fp32"][1]).float().mean())
        rows.append({"precision": p, "perplexity": round(quality[p][0], 3),
                     "greedy_token_agreement": round(agree, 3), "tok_per_s_b1": round(b1, 1),
                     f"tok_per_s_b{args.batch}": round(b32, 1),
                     "batched_answers_equal_to_fp32": f"{same}/{len(texts[p])}"})  # fmt: skip
        if p != "fp32":
            fp1 = speed["fp32"]["b1"][1] / speed["fp32"]["b1"][0]
            fp32b = speed["fp32"]["b32"][1] / speed["fp32"]["b32"][0]
            ratios[f"{p} perplexity vs fp32"] = quality[p][0] / base_ppl
            ratios[f"{p} vs fp32 tok/s, batch 1"] = b1 / fp1
            ratios[f"{p} vs fp32 tok/s, batch {args.batch} mixed adapters"] = b32 / fp32b
    for row in rows:
        print(row)
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}x")
    write_results(
        args.json,
        "precision",
        {
            k: getattr(args, k)
            for k in (
                "precisions",
                "int8_prompts",
                "ppl_tokens",
                "tokens",
                "batch",
                "adapters",
                "rounds",
                "threads",
            )
        },  # fmt: skip
        rows,
        ratios,
        baseline="fp32 (today's path)",
        lower_is_better=[k for k in ratios if "perplexity" in k],
        targets={
            **{k: ("<=", MAX_PPL) for k in ratios if "perplexity" in k},
            **{k: v for k, v in speed_targets(auto, args.batch).items() if k in ratios},
        },
        notes=[
            "perplexity decoded token by token after a 16-token fp32 prompt, as serving does",
            f"held-out text: {HELD_OUT.name}; host profile: {profile['speedup']}",
        ],  # fmt: skip
        extra={"host_profile": profile},
    )


if __name__ == "__main__":
    main()
