"""Training throughput: a plain padded PEFT + Trainer baseline vs loraflow's trainer, one run.

    .venv/bin/python bench/train_throughput.py [--steps 12] [--rows 256] [--rounds 1]

Same model (bundled SmolLM2-135M), same LoRA (r=16 on q,v), same Alpaca-style rows of
30-400 tokens, same batch size and number of optimizer steps. Prints real (non-pad)
tokens per second of each, the ratio to the baseline, and the held-out loss after training
(the baseline and loraflow see the same batches, so the same real tokens). The
configurations take turns step by step (see Arm), so machine noise falls on all of them.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from _results import add_json_flag, write_results
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
    set_seed,
)

from loraflow.datasets.encode import encode_examples
from loraflow.models.resolve import resolve_base_model
from loraflow.training.batching import (
    LabelOnlyTrainer,
    PaddingFreeCollator,
    compact,
    label_only_loss,
)
from loraflow.training.cpu_speed import retain_freed_memory

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


def make_rows(n: int, tokenizer: Any, seed: int = 0) -> list[dict]:
    """Alpaca-style chat examples whose encoded length spreads over ~30-400 tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        target = rng.randint(30, 400)
        q_words = rng.randint(5, max(6, target // 6))
        a_words = max(3, int((target - 40) / 1.3) - q_words)
        question = " ".join(rng.choice(WORDS) for _ in range(q_words))
        answer = " ".join(rng.choice(WORDS) for _ in range(a_words))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{i}: {question}?"},
                    {"role": "assistant", "content": answer + "."},
                ]
            }
        )
    return rows


class Work(NamedTuple):
    """What one step computes: positions through the decoder, logits, attention pairs."""

    positions: int
    logits: int
    pairs: float
    prefix: int = 0  # leading tokens computed once for all rows of the batch


def padded_work(feats: list[dict]) -> Work:
    """Every position of the longest row, logits everywhere, all width^2 query-key pairs.

    The padding mask goes to SDPA with the causal one folded in: a mask, not the causal
    kernel, so every pair is computed.
    """
    width = max(len(f["input_ids"]) for f in feats)
    return Work(width * len(feats), width * len(feats), len(feats) * width * width)


def loraflow_work(feats: list[dict]) -> Work:
    """The batch as loraflow computes it (batching.compact): positions that feed the loss,
    a shared prefix once, logits at targets, causal pairs per row (prefix included)."""
    batch, prefix = compact(PaddingFreeCollator()(feats))
    bounds = batch["segments"].tolist()
    rows = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if prefix:
        rows = [prefix + n for n in rows[1:]]
    logits = int((batch["target_ids"] != -100).sum())
    return Work(bounds[-1], logits, sum(n * (n + 1) / 2 for n in rows), prefix)


class Counting:
    """Wraps a collator and records real (non-pad) tokens and the rows of every batch.

    The work of a batch is worked out from its rows afterwards (`work`), outside the timed
    steps that call the collator.
    """

    def __init__(self, inner: Any, work: Callable[[list[dict]], Work]) -> None:
        self.inner, self.work_of = inner, work
        self.tokens: list[int] = []
        self.batches: list[list[dict]] = []

    def __call__(self, feats: list[dict]) -> dict:
        self.tokens.append(sum(len(f["input_ids"]) for f in feats))
        self.batches.append(feats)
        return self.inner(feats)

    def work(self, start: int, stop: int) -> list[Work]:
        return [self.work_of(feats) for feats in self.batches[start:stop]]


def decoder_weights(model: Any) -> int:
    """Weights of the decoder's own projections (LoRA's left out)."""
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in name and "lora_" not in name
    )


def step_flops(model: Any, linear: int, work: Work) -> float:
    """Arithmetic of one training step: forward plus input-gradient backward (frozen base).

    Per position the decoder's projections cost 4 * their weights (2 forward, 2 for the
    input gradient), the vocabulary projection 4 * V * H where logits are computed, and
    attention 12 * heads * head_dim per query-key pair computed (forward and backward).
    LoRA's own rank-16 products are left out (under 2% of the total for either).
    """
    cfg = model.config
    vocab_proj = cfg.vocab_size * cfg.hidden_size
    attn = 12 * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    attn *= cfg.num_hidden_layers
    return 4 * linear * work.positions + 4 * vocab_proj * work.logits + attn * work.pairs


def lora_model(base_dir: Path) -> Any:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config.use_cache = False
    cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


class Arm:
    """One configuration: its own model, Trainer and batches, advanced one step at a time.

    The arms of a round take turns step by step (who goes first rotates), so a slow spell
    of a shared machine falls on all of them alike instead of on whichever ran then. Each
    step is what Trainer.train does per optimizer step: Trainer.training_step (forward,
    loss, backward), gradient clipping, optimizer and scheduler.
    """

    def __init__(
        self, name: str, base_dir: Path, tok: Any, train: list[dict], steps: int, batch: int,
        out: Path,
    ) -> None:  # fmt: skip
        self.name = name
        self.model = lora_model(base_dir)
        common = dict(
            output_dir=str(out / name),
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=2e-4,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=0,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        if name in ("loraflow", "loraflow_bf16"):
            # loraflow_bf16: the same trainer under bf16 autocast, as TRAINING_PRECISION=bf16
            # (or auto on a host whose micro-benchmark measured bf16 faster) runs it.
            common["bf16"] = name == "loraflow_bf16"
            self.collator = Counting(PaddingFreeCollator(), loraflow_work)
            args = TrainingArguments(**common, label_names=["target_ids"])
            self.trainer: Trainer = LabelOnlyTrainer(
                model=self.model, args=args, train_dataset=train, data_collator=self.collator
            )
        else:
            pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
            self.collator = Counting(pad, padded_work)
            grouping = name == "group_by_length"
            extra = {"train_sampling_strategy": "group_by_length"} if grouping else {}
            args = TrainingArguments(**common, **extra)
            self.trainer = Trainer(
                model=self.model, args=args, train_dataset=train, data_collator=self.collator
            )
        # What Trainer.train does first: accelerate wraps the model's forward, under bf16
        # autocast where the arguments ask for bf16 (a plain forward otherwise).
        self.trainer.model = self.trainer.model_wrapped = self.trainer.accelerator.prepare_model(
            self.model
        )
        self.trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        # Set by Trainer.train's loop, read by training_step.
        self.trainer.current_gradient_accumulation_steps = 1
        # Every arm's sampler starts from the same seed: the same rows in the same batches.
        set_seed(0)
        self.batches = iter(self.trainer.get_train_dataloader())
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.seconds = 0.0

    def step(self, timed: bool) -> None:
        t0 = time.perf_counter()
        tr = self.trainer
        try:
            batch = next(self.batches)
        except StopIteration:  # a new epoch, as Trainer.train would start
            self.batches = iter(tr.get_train_dataloader())
            batch = next(self.batches)
        tr.training_step(tr.model, batch)
        torch.nn.utils.clip_grad_norm_(self.params, tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.seconds += time.perf_counter() - t0

    def result(self, steps: int) -> tuple[float, float]:
        """Real tokens per second and FLOPs per real token over the timed steps."""
        tokens = sum(self.collator.tokens[1:steps])
        linear = decoder_weights(self.model)
        flops = sum(step_flops(self.model, linear, w) for w in self.collator.work(1, steps))
        return tokens / max(self.seconds, 1e-9), flops / tokens


def run_round(
    names: list[str],
    base_dir: Path,
    tok: Any,
    train: list[dict],
    steps: int,
    batch: int,
    out: Path,
) -> list[Arm]:
    """Train every configuration for `steps`, interleaved; step 1 of each is warm-up."""
    arms = [Arm(n, base_dir, tok, train, steps, batch, out) for n in names]
    # loraflow's trainer keeps freed memory in the heap on CPU (training/cpu_speed.py). It
    # is a setting of the whole process, so here every arm runs with it.
    with retain_freed_memory():
        for i in range(steps):
            k = i % len(arms)
            for arm in arms[k:] + arms[:k]:
                arm.step(timed=i > 0)
    return arms


def prefix_note(collator: Counting, steps: int) -> str:
    """How many of the timed steps' real tokens loraflow did not run through the decoder."""
    work, tokens = collator.work(1, steps), sum(collator.tokens[1:steps])
    mean = sum(w.prefix for w in work) / max(len(work), 1)
    skipped = 1 - sum(w.positions for w in work) / max(tokens, 1)
    return (
        f"loraflow: the rows of a batch share their first {mean:.0f} tokens on average (the "
        f"chat template's system prompt), computed once per batch; with each row's last "
        f"position (no target) left out, {skipped:.1%} of the real tokens' positions "
        "are not computed"
    )


def held_out_loss(model: Any, val: list[dict]) -> float:
    """Mean loss over the answer tokens of the held-out rows (same function for everyone)."""
    model.eval()
    collate = PaddingFreeCollator()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(val), 4):
            batch = collate(val[i : i + 4])
            k = int((batch["target_ids"] != -100).sum())
            total += label_only_loss(model, batch).item() * k
            n += k
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="repeat and keep each one's best")
    ap.add_argument("--val-rows", type=int, default=32, help="held-out rows for the loss")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "test-models")
    ap.add_argument(
        "--configs",
        default="padded,group_by_length,loraflow",
        help="comma-separated arms: padded, group_by_length, loraflow, loraflow_bf16 (the "
        "trainer under bf16 autocast; fast only on a CPU with native bf16)",
    )
    add_json_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base_dir = resolve_base_model("bundled:smollm2", args.cache_dir).path
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    encoded = encode_examples(make_rows(args.rows + args.val_rows, tok), tok, 512)
    feats = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    train, val = feats[: args.rows], feats[args.rows :]
    lengths = sorted(len(f["input_ids"]) for f in train)
    print(
        f"{len(train)} rows, tokens min {lengths[0]} median {lengths[len(lengths) // 2]} "
        f"max {lengths[-1]}; batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    names = args.configs.split(",")
    best: dict[str, float] = {}
    losses: dict[str, float] = {}
    work: dict[str, float] = {}
    out = Path("/tmp/loraflow-bench")
    shared_note = ""
    for r in range(args.rounds):
        arms = run_round(names, base_dir, tok, train, args.steps, args.batch, out)
        seen = {a.name: a.collator.tokens for a in arms if a.name != "group_by_length"}
        if len({tuple(t) for t in seen.values()}) > 1:
            raise SystemExit(f"the arms saw different batches: {seen}")
        for arm in arms:
            tps, work[arm.name] = arm.result(args.steps)
            best[arm.name] = max(best.get(arm.name, 0.0), tps)
            losses[arm.name] = held_out_loss(arm.model, val)
            if arm.name.startswith("loraflow"):
                shared_note = prefix_note(arm.collator, args.steps)
            print(
                f"round {r + 1} {arm.name:16s} {tps:8.1f} real tok/s  "
                f"held-out loss {losses[arm.name]:.4f}"
            )
        del arms
    base = best.get("padded")
    print("\nconfig            real tok/s   vs padded   held-out loss   GFLOP/real token")
    for name in names:
        ratio = f"{best[name] / base:9.2f}x" if base else "        -"
        gflop = work[name] / 1e9
        print(f"{name:16s} {best[name]:11.1f} {ratio}   {losses[name]:.4f}   {gflop:8.3f}")
    if base:
        # Doing less arithmetic explains a speed-up up to this ratio; beyond it, the same
        # arithmetic ran faster.
        for name in names:
            if name != "padded":
                print(f"{name}: padded does {work['padded'] / work[name]:.2f}x its arithmetic")
    if shared_note:
        print(shared_note)
    ours = ("loraflow", "loraflow_bf16", "padded")
    if "loraflow" in best:
        others = [best[n] for n in names if n not in ours]
        if others:
            print(f"loraflow vs best built-in option: {best['loraflow'] / max(others):.2f}x")
    rows = [
        {"config": n, "real_tok_per_s": round(best[n], 2), "held_out_loss": round(losses[n], 4),
         "vs_padded": round(best[n] / base, 3) if base else None,
         "gflop_per_real_token": round(work[n] / 1e9, 4)}
        for n in names
    ]  # fmt: skip
    ratios = {f"{n} vs padded": best[n] / base for n in names if base and n != "padded"}
    builtin = [best[n] for n in names if n not in ours]
    if "loraflow" in best and builtin:
        ratios["loraflow vs best built-in"] = best["loraflow"] / max(builtin)
    if "loraflow" in best and "loraflow_bf16" in best:
        # Issue #30: on a CPU with native bf16, autocast must pay off without costing loss.
        ratios["loraflow_bf16 vs loraflow (fp32)"] = best["loraflow_bf16"] / best["loraflow"]
        ratios["loraflow_bf16 held-out loss vs fp32"] = losses["loraflow_bf16"] / losses["loraflow"]
        print(
            f"loraflow bf16 vs fp32: {ratios['loraflow_bf16 vs loraflow (fp32)']:.2f}x tok/s, "
            f"held-out loss {ratios['loraflow_bf16 held-out loss vs fp32']:.4f}x"
        )
    targets = {
        "loraflow vs padded": (">=", 2.0),
        "loraflow vs best built-in": (">=", 1.2),
        "loraflow_bf16 vs padded": (">=", 2.0),
        "loraflow_bf16 vs loraflow (fp32)": (">=", 1.5),
        "loraflow_bf16 held-out loss vs fp32": ("<=", 1.005),
    }
    config = {k: getattr(args, k) for k in ("steps", "rows", "batch", "rounds", "val_rows")}
    config.update(configs=names, threads=torch.get_num_threads(), lora="r=16 on q_proj,v_proj")
    write_results(
        args.json,
        "train_throughput",
        config,
        rows,
        ratios,
        baseline="padded: PEFT + Trainer with DataCollatorForSeq2Seq",
        lower_is_better=[k for k in ratios if "loss" in k],
        targets={k: v for k, v in targets.items() if k in ratios},  # issues #4 and #30
        notes=[
            f"token lengths min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
            f"max {lengths[-1]}",
            *([shared_note] if shared_note else []),
            f"held-out loss (answer tokens of {len(val)} unseen rows): "
            + ", ".join(f"{n} {losses[n]:.4f}" for n in names),
            *(
                f"arithmetic per real token: padded does {work['padded'] / work[n]:.2f}x "
                f"what {n} does (a speed-up up to that is less work; beyond it, faster work)"
                for n in names
                if n != "padded" and "padded" in work
            ),
        ],  # fmt: skip
    )


if __name__ == "__main__":
    main()
