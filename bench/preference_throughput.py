"""DPO throughput: TRL's DPOTrainer vs loraflow's preference trainer, one run.

    .venv/bin/python bench/preference_throughput.py [--steps 8] [--batch 4] [--max-len 512]

Same model (bundled SmolLM2-135M), same LoRA (r=16 on q,v), same pairs (prompts of
~60-250 tokens, answers of ~10-60), same batch size and number of optimizer steps, fp32 and
no gradient checkpointing for both (TRL's defaults turn on bf16 and checkpointing, a trap on
CPU). Prints pairs per second of each and the ratio (loraflow / TRL). The reference is the
base with the adapter disabled in both: TRL computes it every step, loraflow once before the
first step (its time is counted). TRL is an optional dependency of the bench only
(`pip install 'loraflow[bench]'`, or `pip install trl --no-deps` beside a pinned torch); without
it the bench says so and times loraflow alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from pathlib import Path
from typing import Any

import torch
from _results import add_json_flag, write_results
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from loraflow.datasets.encode import encode_prompt_answers
from loraflow.models.resolve import resolve_base_model
from loraflow.training.preference import (
    GroupCollator,
    PreferenceTrainer,
    reference_logps,
    use_group_attention,
)

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "model",
    "learns",
    "from",
    "examples",
    "of",
    "questions",
    "and",
    "answers",
    "about",
    "rivers",
    "mountains",
    "cities",
    "history",
    "science",
    "cooking",
    "music",
    "gardens",
    "machines",
    "weather",
    "travel",
    "books",
]


def make_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chat pairs: a prompt, a chosen and a rejected answer of random lengths."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [
        {
            "prompt": [{"role": "user", "content": f"{i}: {text(40, 200)}?"}],
            "chosen": [{"role": "assistant", "content": text(8, 50) + "."}],
            "rejected": [{"role": "assistant", "content": text(8, 50) + "."}],
        }
        for i in range(n)
    ]


def lora_model(path: Path) -> Any:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.config.use_cache = False
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    return get_peft_model(base, config)


def run_loraflow(
    path: Path, tok: Any, pairs: list[dict], a: argparse.Namespace, out: Path
) -> float:
    model = lora_model(path)
    feats = []
    for p in pairs:
        enc = encode_prompt_answers(p["prompt"], [p["chosen"], p["rejected"]], tok, a.max_len)
        assert enc is not None
        feats.append({"prompt": enc.prompt, "answers": enc.answers})
    args = TrainingArguments(
        output_dir=str(out / "loraflow"),
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        label_names=["target_ids"],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    used = feats[: a.steps * a.batch]
    start = time.perf_counter()
    use_group_attention(model)
    for f, ref in zip(used, reference_logps(model, used, a.batch, from_base=True), strict=True):
        f["ref"] = ref
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=used,
        data_collator=GroupCollator(),
        method="dpo",
        beta=0.1,
        loss_type="sigmoid",
    )
    trainer.train()
    return time.perf_counter() - start


def run_trl(path: Path, tok: Any, pairs: list[dict], a: argparse.Namespace, out: Path) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = lora_model(path)
    config = DPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=a.max_len,
        beta=0.1,
        loss_type=["sigmoid"],
        disable_tqdm=True,
        seed=0,
    )
    data = Dataset.from_list(pairs[: a.steps * a.batch])
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per trainer")
    add_json_flag(parser)
    a = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    path = resolve_base_model("bundled:smollm2", REPO / ".cache" / "test-models").path
    tok = AutoTokenizer.from_pretrained(path)
    pairs = make_pairs(a.steps * a.batch)
    out = REPO / ".cache" / "bench-preference"
    n = a.steps * a.batch
    print(
        f"DPO, {a.steps} steps of {a.batch} pairs, fp32, no checkpointing, "
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    rows = []
    ratios: dict[str, float] = {}
    have_trl = importlib.util.find_spec("trl") is not None
    if not have_trl:
        print("TRL is not installed: no baseline (pip install trl --no-deps); loraflow alone")
    # Rounds alternate the two trainers, so a change in machine load hits both alike.
    trl_s, ours = 0.0, 0.0
    for r in range(a.rounds):
        if have_trl:
            s = run_trl(path, tok, pairs, a, out)
            trl_s += s
            print(f"round {r + 1}: TRL DPOTrainer {s:.1f} s", flush=True)
        s = run_loraflow(path, tok, pairs, a, out)
        ours += s
        print(f"round {r + 1}: loraflow {s:.1f} s", flush=True)
    total = n * a.rounds
    if have_trl:
        rows.append(
            {
                "trainer": "TRL DPOTrainer",
                "seconds": round(trl_s, 1),
                "pairs_per_s": round(total / trl_s, 3),
            }
        )
        print(f"TRL DPOTrainer: {trl_s:.1f} s, {total / trl_s:.3f} pairs/s")
    rows.append(
        {"trainer": "loraflow", "seconds": round(ours, 1), "pairs_per_s": round(total / ours, 3)}
    )
    print(f"loraflow (reference pass included): {ours:.1f} s, {total / ours:.3f} pairs/s")
    if have_trl:
        ratios["loraflow / TRL DPOTrainer"] = round(trl_s / ours, 2)
        print(f"ratio loraflow / TRL: {trl_s / ours:.2f}x (target >= 1.3x)")
    write_results(
        a.json,
        "preference_throughput",
        {k: v for k, v in vars(a).items() if k != "json"},
        rows,
        ratios,
        baseline="TRL DPOTrainer",
        targets={"loraflow / TRL DPOTrainer": (">=", 1.3)},
    )


if __name__ == "__main__":
    main()
