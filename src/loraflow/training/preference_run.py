"""One preference-tuning run (DPO, ORPO, KTO): data, reference, training, held-out accuracy."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.datasets.encode import encode_prompt_answers
from loraflow.datasets.formats import Example, load_examples
from loraflow.datasets.preference import pairs_to_kto
from loraflow.datasets.prepare import split_train_val
from loraflow.errors import InvalidInput
from loraflow.training.params import METHOD_DATASETS
from loraflow.training.trainer import (
    TrainResult,
    TrainSpec,
    drop_incomplete_checkpoints,
    last_checkpoint,
    write_json,
    write_output,
)

log = logging.getLogger(__name__)
Feature = dict[str, Any]


def _key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_examples(
    examples: list[Example], method: str, val_split: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Train/val split; KTO examples are split by prompt, so held-out prompts keep both
    their desirable and undesirable answers (which make the held-out pairs)."""
    if method != "kto":
        return split_train_val(examples, val_split, seed)
    by_prompt: dict[str, list[Example]] = {}
    for ex in examples:
        by_prompt.setdefault(_key(ex["prompt"]), []).append(ex)
    groups: list[Any] = list(by_prompt.values())
    train, val = split_train_val(groups, val_split, seed)
    return _flat(train), _flat(val)


def _flat(groups: list[Any]) -> list[Example]:
    return [e for g in groups for e in g]


def _examples(spec: TrainSpec, path: Path) -> list[Example]:
    method = spec.params.method
    if spec.dataset_type not in METHOD_DATASETS[method]:
        raise InvalidInput(
            f"method={method!r} trains on {' or '.join(METHOD_DATASETS[method])} datasets, "
            f"not {spec.dataset_type!r}"
        )
    examples = load_examples(path, spec.dataset_type)
    if method == "kto" and spec.dataset_type == "preference":
        examples = pairs_to_kto(examples)
    return examples


def features(spec: TrainSpec, tokenizer: Any) -> tuple[list[Feature], list[Feature]]:
    """Encoded training groups and held-out pairs (chosen, rejected) for the accuracy."""
    p = spec.params
    examples = _examples(spec, spec.dataset_path)
    if spec.val_path is not None:
        train_ex, val_ex = examples, _examples(spec, spec.val_path)
    else:
        train_ex, val_ex = split_examples(examples, p.method, p.val_split, p.seed)
    if p.method == "kto":
        train = _kto_features(train_ex, tokenizer, p.max_len, p.seed)
        val_pairs = _pairs_from_labels(val_ex)
    else:
        train = _pair_features(train_ex, tokenizer, p.max_len)
        val_pairs = val_ex
    if not train:
        raise InvalidInput(
            f"dataset {spec.dataset_path.name!r} has no example whose prompt fits "
            f"max_len={p.max_len}",
            hint="raise max_len, or shorten the prompts",
        )
    return train, _pair_features(val_pairs, tokenizer, p.max_len)


def _pair_features(examples: list[Example], tokenizer: Any, max_len: int) -> list[Feature]:
    out = []
    for ex in examples:
        enc = encode_prompt_answers(
            ex["prompt"], [ex["chosen"], ex["rejected"]], tokenizer, max_len
        )
        if enc is not None:
            out.append({"prompt": enc.prompt, "answers": enc.answers})
    return out


def _kto_features(
    examples: list[Example], tokenizer: Any, max_len: int, seed: int
) -> list[Feature]:
    # Each example also carries the answer of another example (a fixed pairing, so the
    # reference log-probs can be computed once): the KL estimate's mismatched answer.
    order = list(range(len(examples)))
    random.Random(seed + 1).shuffle(order)
    other = {a: b for a, b in zip(order, order[1:] + order[:1], strict=True)}
    out = []
    for i, ex in enumerate(examples):
        mismatched = examples[other[i]]["completion"]
        enc = encode_prompt_answers(
            ex["prompt"], [ex["completion"], mismatched], tokenizer, max_len
        )
        if enc is not None:
            out.append({"prompt": enc.prompt, "answers": enc.answers, "label": ex["label"]})
    return out


def _pairs_from_labels(examples: list[Example]) -> list[Example]:
    """Held-out pairs from KTO examples: per prompt, a desirable and an undesirable answer."""
    good: dict[str, Example] = {}
    bad: dict[str, Example] = {}
    for ex in examples:
        (good if ex["label"] else bad).setdefault(_key(ex["prompt"]), ex)
    return [
        {"prompt": ex["prompt"], "chosen": ex["completion"], "rejected": bad[k]["completion"]}
        for k, ex in good.items()
        if k in bad
    ]


def run_preference(
    spec: TrainSpec,
    plan: dict[str, Any],
    args: Any,
    model: Any,
    tokenizer: Any,
    report: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    resume: bool,
) -> TrainResult:
    """Train with the method's loss; report held-out preference accuracy before and after."""
    from loraflow.training.preference import (
        EVAL_FILE,
        GroupCollator,
        PreferenceTrainer,
        attach_reference,
        pair_accuracy,
        use_group_attention,
    )
    from loraflow.training.progress import ProgressCallback

    p = spec.params
    use_group_attention(model)
    train, val = features(spec, tokenizer)
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    batch = plan["batch_size"]
    evaluation_path = out / EVAL_FILE
    evaluation: dict[str, Any] = {}
    if evaluation_path.is_file():
        evaluation = json.loads(evaluation_path.read_text("utf-8"))
    if "before" not in evaluation:
        report_message(report, "measuring held-out preference accuracy before training")
        evaluation = {"held_out_pairs": len(val), "before": pair_accuracy(model, val, batch)}
        write_json(evaluation_path, evaluation)
    if p.method in ("dpo", "kto"):
        report_message(report, "computing the reference log-probabilities")
        attach_reference(model, train, out, batch, from_base=spec.init_adapter_path is None)
    callback = ProgressCallback(report, should_stop, plan["label"])
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=GroupCollator(),
        callbacks=[callback],
        method=p.method,
        beta=p.beta,
        loss_type=p.loss_type,
    )
    checkpoint = last_checkpoint(out) if resume else None
    for torn in drop_incomplete_checkpoints(out):
        log.warning("removed the incomplete checkpoint %s (a save was interrupted)", torn)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics: dict[str, Any] = {
        "history": callback.history,
        "train_sequences": len(train),
        "val_sequences": len(val),
    }
    if callback.cancelled:
        return TrainResult("cancelled", out, metrics)
    evaluation["after"] = pair_accuracy(model, val, batch)
    metrics["preference_accuracy"] = evaluation
    method_params: dict[str, Any] = {"beta": p.beta}
    if p.method == "dpo":
        method_params["loss_type"] = p.loss_type
    extra = {
        "method_params": method_params,
        "init_adapter": p.init_adapter or None,
        "reference": p.init_adapter or "base",
        "preference_accuracy": evaluation,
    }
    write_output(spec, trainer, tokenizer, metrics, plan, extra)
    return TrainResult("completed", out, metrics)


def report_message(report: Callable[[dict[str, Any]], None], message: str) -> None:
    """A progress message before the first step (the worker's report needs a history)."""
    report({"message": message, "history": []})
