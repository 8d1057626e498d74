"""Train one LoRA / QLoRA adapter with PEFT + transformers and write its output folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.datasets.encode import Encoded, encode_examples
from loraflow.datasets.formats import load_examples
from loraflow.datasets.prepare import split_train_val
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.models.resolve import ResolvedModel
from loraflow.permissions import share_tree
from loraflow.training.params import TrainParams

if TYPE_CHECKING:
    # Only a type here: the launching worker imports this module and needs no transformers.
    from loraflow.training.progress import Report

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
OOM_HINT = "lower batch_size or max_len, use quantization='4bit' on CUDA, or train on CPU"


@dataclass
class TrainSpec:
    """Everything one training run needs; paths are already resolved and checked."""

    task_name: str
    base_model: str
    base_model_path: Path
    dataset_path: Path
    dataset_type: str
    output_dir: Path
    params: TrainParams = field(default_factory=TrainParams)
    val_path: Path | None = None
    accelerate_config: Path | None = None
    init_adapter_path: Path | None = None
    """The registered adapter this run continues (params.init_adapter), resolved."""


@dataclass
class TrainResult:
    """How a run ended: completed (adapter written) or cancelled (checkpoint kept)."""

    status: str
    output_dir: Path
    metrics: dict[str, Any]
    main: bool = True
    """False in the ranks of a multi-process run other than rank 0."""


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder of a run, or None."""
    found = [p for p in _checkpoints(output_dir) if is_complete_checkpoint(p)]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_kept(output_dir: Path) -> tuple[Path | None, str]:
    """The run's newest complete checkpoint and the words a job message says of it."""
    ckpt = last_checkpoint(output_dir)
    return ckpt, f"checkpoint {ckpt.name} kept" if ckpt else "no checkpoint yet"


def _checkpoints(output_dir: Path) -> list[Path]:
    folder = output_dir / CHECKPOINTS
    return [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]


def is_complete_checkpoint(checkpoint: Path) -> bool:
    # The Trainer writes a checkpoint in place, trainer_state.json last: a worker killed
    # while saving leaves a folder without it (or with half of it) that cannot be resumed.
    try:
        json.loads((checkpoint / "trainer_state.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return True


def drop_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Delete checkpoint folders a killed save left half-written; returns them."""
    torn = [p for p in _checkpoints(output_dir) if not is_complete_checkpoint(p)]
    for path in torn:
        # Left in place, the Trainer's rotation would count it as the newest checkpoint.
        shutil.rmtree(path, ignore_errors=True)
    return torn


def load_data(spec: TrainSpec, tokenizer: Any) -> tuple[list[Encoded], list[Encoded]]:
    """Encoded train and validation sequences."""
    p = spec.params
    examples = load_examples(spec.dataset_path, spec.dataset_type, p.chunk_size)
    if spec.val_path is not None:
        train_ex, val_ex = examples, load_examples(spec.val_path, spec.dataset_type, p.chunk_size)
    else:
        train_ex, val_ex = split_train_val(examples, p.val_split, p.seed)
    train = encode_examples(train_ex, tokenizer, p.max_len)
    if not train:
        raise InvalidInput(
            f"dataset {spec.dataset_path.name!r} has no trainable tokens within "
            f"max_len={p.max_len}",
            hint="raise max_len, or check that records have assistant/output text",
        )
    return train, encode_examples(val_ex, tokenizer, p.max_len)


def run_training(
    spec: TrainSpec,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train, checkpoint every epoch, evaluate every epoch, and write the adapter folder."""
    import torch

    try:
        return _run(spec, report or (lambda _: None), should_stop or (lambda: False), resume)
    except torch.OutOfMemoryError as exc:
        raise LoraflowError(f"out of memory while training: {exc}", hint=OOM_HINT) from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise LoraflowError(f"out of memory while training: {exc}", hint=OOM_HINT) from exc
        raise


def _run(spec: TrainSpec, report: Report, should_stop: Callable[[], bool], resume: bool) -> Any:
    import torch

    from loraflow.training.batching import LabelOnlyTrainer, PaddingFreeCollator
    from loraflow.training.early_stop import EarlyStopOnEvalLoss
    from loraflow.training.model import build_lora_model, plan_device
    from loraflow.training.progress import ProgressCallback

    # The host's precision profile is cached beside the runs (a folder in the data dir).
    plan = plan_device(spec.params, profile_dir=spec.output_dir.parent)
    if plan["max_len"] != spec.params.max_len:
        # A GPU-size preset raised the default max length (the 12 GB+ preset).
        spec = replace(spec, params=replace(spec.params, max_len=plan["max_len"]))
    p = spec.params
    # Built first: it sets up the process group of a launched run and names this rank's GPU.
    args = _training_args(spec, plan, evaluate=True)
    if plan["device"] != "cpu":
        plan["device"] = str(args.device)
    torch.manual_seed(p.seed)
    resolved = ResolvedModel("hf_dir", spec.base_model_path, None, spec.base_model)
    model, tokenizer = build_lora_model(resolved, p, plan, spec.init_adapter_path)
    if p.method != "sft":
        from loraflow.training.preference_run import run_preference

        args = _training_args(spec, plan, evaluate=False)
        return run_preference(spec, plan, args, model, tokenizer, report, should_stop, resume)
    train, val = load_data(spec, tokenizer)
    if not val and p.early_stopping_patience > 0:
        # The submit check saw validation examples; none of them survived encoding.
        raise InvalidInput(
            f"early_stopping_patience={p.early_stopping_patience} needs a validation set, and "
            f"no validation example has trainable tokens within max_len={p.max_len}",
            hint="raise max_len, or give validation records with assistant/output text",
        )
    if not val:
        args = _training_args(spec, plan, evaluate=False)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    callback = ProgressCallback(report, should_stop, plan["label"])
    early = EarlyStopOnEvalLoss(p.early_stopping_patience, p.early_stopping_min_delta)
    trainer = LabelOnlyTrainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in train],
        eval_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in val] or None,
        data_collator=PaddingFreeCollator(),
        callbacks=[callback, early],
    )
    main = trainer.is_world_process_zero()
    checkpoint = last_checkpoint(spec.output_dir) if resume else None
    if main:
        for torn in drop_incomplete_checkpoints(spec.output_dir):
            log.warning("removed the incomplete checkpoint %s (a save was interrupted)", torn)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = {
        "history": callback.history,
        "train_sequences": len(train),
        "val_sequences": len(val),
    }
    if callback.cancelled:
        return TrainResult("cancelled", spec.output_dir, metrics, main)
    if early.reason:
        metrics["stopped_early"] = early.reason
    if val and not any("eval_loss" in h for h in callback.history):
        # max_steps ended the run before the first epoch's evaluation.
        callback.history.append(
            {"step": trainer.state.global_step, "eval_loss": trainer.evaluate()["eval_loss"]}
        )
    write_output(spec, trainer, tokenizer, metrics, plan)
    return TrainResult("completed", spec.output_dir, metrics, main)


def _training_args(spec: TrainSpec, plan: dict[str, Any], evaluate: bool) -> Any:
    from transformers import TrainingArguments

    p = spec.params
    launched = p.num_processes > 1
    return TrainingArguments(
        output_dir=str(spec.output_dir / CHECKPOINTS),
        per_device_train_batch_size=plan["batch_size"],
        per_device_eval_batch_size=plan["batch_size"],
        gradient_accumulation_steps=plan["grad_accum"],
        num_train_epochs=p.epochs,
        max_steps=p.max_steps or -1,
        learning_rate=p.lr,
        lr_scheduler_type="linear",
        warmup_steps=0.03,
        logging_steps=1,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="epoch",
        save_total_limit=2,
        # bf16 autocast on CPU only where measured faster: on AVX2 it made a step ~40x
        # slower (DESIGN.md). The LoRA weights and the optimizer state stay fp32.
        bf16=plan["bf16"],
        fp16=False,
        gradient_checkpointing=plan["checkpointing"],
        use_cpu=plan["device"] == "cpu",
        # Every LoRA weight gets a gradient: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False if launched else None,
        ddp_backend="gloo" if launched and plan["device"] == "cpu" else None,
        report_to="none",
        remove_unused_columns=False,
        label_names=["target_ids"],
        prediction_loss_only=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=p.seed,
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), "utf-8")
    os.replace(tmp, path)


def write_output(
    spec: TrainSpec,
    trainer: Any,
    tokenizer: Any,
    metrics: dict,
    plan: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Move the adapter into the output folder and write its arguments, metrics and metadata.

    `extra`: more fields for loraflow.json (a preference run's method and results).
    """
    out = spec.output_dir
    staging = out / ".final"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    # Every rank takes part: under FSDP or DeepSpeed the weights are gathered from all of
    # them; only rank 0 writes.
    trainer.save_model(str(staging))
    if not main:
        return
    # The Trainer also pickles its arguments there; adapters hold safetensors and JSON only.
    (staging / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(staging)
    # Readable by a serving process of another user (safetensors writes files 0600).
    share_tree(staging)
    # adapter_config.json goes in last: a folder with it is a complete adapter to scanners.
    names = sorted(os.listdir(staging), key=lambda n: n == "adapter_config.json")
    for name in names:
        os.replace(staging / name, out / name)
    staging.rmdir()
    # Checkpoints too: a kept checkpoint is an adapter folder others may read.
    share_tree(out / CHECKPOINTS)
    write_json(out / "training_args.json", {**spec.params.to_dict(), **plan})
    write_json(out / "metrics.json", metrics)
    history = metrics["history"]
    write_json(
        out / "loraflow.json",
        {
            "name": out.name,
            "task_name": spec.task_name,
            "type": "lora",
            "base_model": spec.base_model,
            "base_model_path": str(spec.base_model_path),
            "dataset": spec.dataset_path.name,
            "dataset_type": spec.dataset_type,
            "precision": plan["precision"],
            "created_at": datetime.now(UTC).isoformat(),
            "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
            "eval_loss": next(
                (h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None
            ),
            "method": spec.params.method,
            **(extra or {}),
        },
    )
