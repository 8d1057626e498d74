"""Preference tuning (DPO, ORPO, KTO) on the padding-free batches of batching.py.

A batch is one packed row of groups: each group is a prompt followed by its answers (a
pair's chosen and rejected answer; a KTO example's answer and another example's answer for
the KL estimate). The prompt is computed once for all its answers (`_grouped_attention`),
and only answer positions are projected onto the vocabulary.

The losses follow the papers and TRL's definitions (DPO: Rafailov et al. 2023, with the
IPO and hinge variants; ORPO: Hong et al. 2024; KTO: Ethayarajh et al. 2024). Why not TRL's
trainers: TRL is not a dependency (its configs turn on bf16 and gradient checkpointing, a trap
on CPU, see batching.py), and its DPOTrainer runs the prompt once per answer.

The reference model is the frozen starting point. Its log-probabilities are computed once,
before the first step, with the starting weights (the base with the adapter disabled, or
the adapter a job continues), so no second model is held in memory; they are kept beside the
checkpoints, so a resumed run uses the same reference.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from loraflow.datasets.encode import IGNORE
from loraflow.errors import InvalidInput
from loraflow.training.batching import SEGMENT_ATTENTION, LabelOnlyTrainer, _plain_causal

REFERENCE_FILE = "reference_logps.json"
EVAL_FILE = "preference_eval.json"
METRIC_KEYS = ("rewards_chosen", "rewards_rejected", "margin", "accuracy")


class GroupCollator:
    """Pack prompt groups into one row: the prompt minus its last token, then each answer.

    Each answer piece starts with the prompt's last token (whose output predicts the
    answer's first token, different per answer) and ends one token before the answer's end
    (the last token predicts nothing). Targets are the answer's tokens.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        pos: list[int] = []
        targets: list[int] = []
        groups = []
        for f in features:
            prompt = f["prompt"]
            head = prompt[:-1]
            ids += head
            pos += range(len(head))
            targets += [IGNORE] * len(head)
            group = [len(head)]
            for answer in f["answers"]:
                piece = [prompt[-1], *answer[:-1]]
                ids += piece
                pos += range(len(head), len(head) + len(piece))
                targets += answer
                group.append(len(piece))
            groups.append(group)
        out = {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "target_ids": torch.tensor([targets]),
            "groups": torch.tensor(groups),
            "label": torch.tensor([int(f.get("label", True)) for f in features]),
        }
        if "ref" in features[0]:
            out["ref_logps"] = torch.tensor([f["ref"] for f in features], dtype=torch.float32)
        return out


def use_group_attention(model: Any) -> None:
    """Make the model run `segment_attention` (plain SDPA where a call has no groups).

    Set for the whole run, not per call, so a forward that gradient checkpointing re-runs
    during backward attends the same way.
    """
    config = model.config
    if not _plain_causal(model):
        raise InvalidInput(
            "preference training packs prompts and answers with per-sequence attention, "
            "which this model's sliding-window or sink attention does not allow",
            hint="use method='sft', or a model with full causal attention",
        )
    if config._attn_implementation not in ("sdpa", SEGMENT_ATTENTION):
        raise InvalidInput(
            f"preference training needs SDPA attention; the model uses "
            f"{config._attn_implementation!r}"
        )
    config._attn_implementation = SEGMENT_ATTENTION


def answer_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of every answer ([groups, answers]) and their token counts."""
    if model.config._attn_implementation != SEGMENT_ATTENTION:
        # transformers' own packed mask would let each answer attend to the one before it.
        raise RuntimeError("call use_group_attention(model) before computing answer log-probs")
    groups = batch["groups"].tolist()
    targets = batch["target_ids"][0]
    keep = (targets != IGNORE).nonzero().squeeze(-1)
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
        loraflow_groups=groups,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")
    lengths = torch.tensor([n for g in groups for n in g[1:]], device=token_logps.device)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    sums = torch.zeros(len(lengths), device=token_logps.device).index_add(0, owner, token_logps)
    shape = (len(groups), len(groups[0]) - 1)
    return sums.view(shape), lengths.view(shape).float()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(x)) for a log-probability x < 0, stable near 0.
    return torch.log(-torch.expm1(x.clamp(max=-1e-6)))


def preference_loss(
    method: str,
    beta: float,
    loss_type: str,
    logps: torch.Tensor,
    counts: torch.Tensor,
    ref: torch.Tensor | None,
    label: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's loss over a batch, and its rewards, margin and accuracy."""
    if method == "orpo":
        avg = logps / counts
        nll = -logps[:, 0].sum() / counts[:, 0].sum()
        log_odds = (avg[:, 0] - avg[:, 1]) - (_log1mexp(avg[:, 0]) - _log1mexp(avg[:, 1]))
        loss = nll - beta * F.logsigmoid(log_odds).mean()
        chosen, rejected = beta * avg[:, 0].detach(), beta * avg[:, 1].detach()
        return loss, _pair_metrics(chosen, rejected)
    assert ref is not None, "dpo and kto need reference log-probabilities"
    ratio = logps - ref
    if method == "dpo":
        if loss_type == "ipo":
            # IPO regresses the length-normalised log-ratio gap onto 1 / (2 beta).
            gap = (ratio[:, 0] - ratio[:, 1]) / counts.mean(dim=1)
            losses = (gap - 1 / (2 * beta)) ** 2
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * (ratio[:, 0] - ratio[:, 1]))
        else:
            losses = -F.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
        return losses.mean(), _pair_metrics(
            beta * ratio[:, 0].detach(), beta * ratio[:, 1].detach()
        )
    # KTO: the reference point is the policy's KL from the reference, estimated on answers
    # to other prompts, not differentiated (as in the paper and TRL).
    kl = ratio[:, 1].detach().mean().clamp(min=0)
    r = ratio[:, 0]
    good = label.bool()
    losses = torch.where(
        good, 1 - torch.sigmoid(beta * (r - kl)), 1 - torch.sigmoid(beta * (kl - r))
    )
    rewards = beta * r.detach()
    metrics = {"kl": float(kl)}
    if good.any():
        metrics["rewards_chosen"] = float(rewards[good].mean())
    if (~good).any():
        metrics["rewards_rejected"] = float(rewards[~good].mean())
    if good.any() and (~good).any():
        metrics["margin"] = metrics["rewards_chosen"] - metrics["rewards_rejected"]
    metrics["accuracy"] = float(((rewards > 0) == good).float().mean())
    return losses.mean(), metrics


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    return {
        "rewards_chosen": float(chosen.mean()),
        "rewards_rejected": float(rejected.mean()),
        "margin": float((chosen - rejected).mean()),
        "accuracy": float((chosen > rejected).float().mean()),
    }


def _batches(features: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(features), size):
        yield features[i : i + size]


@torch.no_grad()
def reference_logps(
    model: Any, features: list[dict[str, Any]], batch_size: int, from_base: bool
) -> list[list[float]]:
    """Each feature's answer log-probabilities under the starting weights, dropout off.

    `from_base`: the reference is the base model, computed with the adapter disabled.
    """
    was_training = model.training
    model.eval()
    collate = GroupCollator()
    device = next(model.parameters()).device
    out: list[list[float]] = []
    try:
        for chunk in _batches(features, batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            if from_base:
                with model.disable_adapter():
                    logps, _ = answer_logps(model, batch)
            else:
                logps, _ = answer_logps(model, batch)
            out += logps.tolist()
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def pair_accuracy(model: Any, pairs: list[dict[str, Any]], batch_size: int) -> float | None:
    """Share of held-out pairs whose chosen answer has the higher log-probability."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    collate = GroupCollator()
    device = next(model.parameters()).device
    wins = 0
    try:
        for chunk in _batches(pairs, batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            logps, _ = answer_logps(model, batch)
            wins += int((logps[:, 0] > logps[:, 1]).sum())
    finally:
        model.train(was_training)
    return round(wins / len(pairs), 4)


def attach_reference(
    model: Any,
    features: list[dict[str, Any]],
    output_dir: Path,
    batch_size: int,
    from_base: bool,
) -> None:
    """Add each feature's reference log-probabilities, computed once per run and kept."""
    path = output_dir / REFERENCE_FILE
    values: list[list[float]] | None = None
    if path.is_file():
        # Written by this run before its first step: a resumed run reuses it, since the
        # adapter weights it starts from are no longer the reference.
        kept = json.loads(path.read_text("utf-8"))
        if isinstance(kept, list) and len(kept) == len(features):
            values = kept
    if values is None:
        values = reference_logps(model, features, batch_size, from_base)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(values), "utf-8")
        tmp.replace(path)
    for f, ref in zip(features, values, strict=True):
        f["ref"] = ref


class PreferenceTrainer(LabelOnlyTrainer):
    """A Trainer over GroupCollator batches with a DPO, ORPO or KTO loss."""

    def __init__(self, *args: Any, method: str, beta: float, loss_type: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method, self.beta, self.loss_type = method, beta, loss_type
        self._stored: dict[str, list[float]] = defaultdict(list)
        use_group_attention(self.model)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        logps, counts = answer_logps(model, inputs)
        loss, metrics = preference_loss(
            self.method,
            self.beta,
            self.loss_type,
            logps,
            counts,
            inputs.get("ref_logps"),
            inputs["label"],
        )
        for key, value in metrics.items():
            self._stored[key].append(value)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            # The step's rewards and accuracy, averaged over its micro-batches.
            for key, values in self._stored.items():
                logs[key] = round(sum(values) / len(values), 6)
            self._stored.clear()
        super().log(logs, start_time)
