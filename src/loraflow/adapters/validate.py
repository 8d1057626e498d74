"""Score an adapter (or a base model alone) on basic health, domain knowledge, safety and speed.

Dimensions and weights: basic 40, domain 30, safety 20, performance 10. A dimension with
nothing to measure (no validation file and no questions; the performance of a base model,
which is its own reference) is marked "skipped" with the reason, gets no score, and its
weight is shared among the scored dimensions in proportion to theirs. When the adapter does
not load, basic scores 0 and every other dimension is skipped, so the overall score is 0.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from loraflow.adapters.inspect import sha256_file
from loraflow.adapters.probes import (
    KeywordRefusalJudge,
    Probe,
    SafetyJudge,
    builtin_probes,
    parse_probes,
    select_probes,
)
from loraflow.adapters.validation_report import (
    WEIGHTS,
    Check,
    Dimension,
    GateDecision,
    ValidationReport,
    check_gate,
    combine,
    grade_for,
    recommend,
)
from loraflow.adapters.validation_runs import (
    ModelUnderTest,
    eval_loss,
    load_merged_under_test,
    load_model_under_test,
    load_validation_examples,
    time_generations,
)
from loraflow.errors import InvalidInput
from loraflow.models.adapters import ADAPTER_WEIGHTS, check_adapter_folder
from loraflow.text import repeated_ngram

__all__ = [
    "MODES",
    "WEIGHTS",
    "GateDecision",
    "ValidationReport",
    "check_gate",
    "grade_for",
    "validate_adapter",
    "validate_model",
]

Mode = Literal["quick", "standard", "comprehensive"]
Progress = Callable[[str, float], None]
MATCHES = ("contains", "exact")
# Strings the tokenizer must give back unchanged after encode + decode (CJK included).
ROUND_TRIP = [
    "Hello, world! LoRA adapters fine-tune large models.",
    "你好，世界！模型微调需要高质量的数据。",
    "Mixed 中英文 text, numbers 3.14 and symbols: (a+b)^2 = 42%",
]
SMOKE_PROMPT = "Say hello and introduce yourself in one sentence."


@dataclass(frozen=True)
class ModePlan:
    """How much of each dimension a validation mode runs (None: everything given)."""

    max_new_tokens: int
    domain: bool
    max_questions: int | None
    max_val_examples: int | None
    harmful_probes: int | None
    benign_probes: int | None
    timing_runs: int


MODES: dict[str, ModePlan] = {
    "quick": ModePlan(24, False, 0, 0, 3, 1, 2),
    "standard": ModePlan(32, True, 20, 64, 6, 2, 3),
    "comprehensive": ModePlan(48, True, None, None, None, None, 8),
}


def validate_adapter(
    adapter_dir: Path | None,
    base_model_dir: Path,
    *,
    mode: Mode = "standard",
    questions: list[dict] | None = None,
    val_file: Path | None = None,
    probes: list[dict] | None = None,
    replace_probes: bool = False,
    judge: SafetyJudge | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> ValidationReport:
    """Validate `adapter_dir` on `base_model_dir` (None: the base model alone) and score it.

    `probes` extend the built-in safety probes, or replace them with `replace_probes`.
    """
    return _validate(
        adapter_dir,
        None,
        base_model_dir,
        mode=mode,
        questions=questions,
        val_file=val_file,
        probes=probes,
        replace_probes=replace_probes,
        judge=judge,
        device=device,
        progress=progress,
    )


def validate_model(
    model_dir: Path,
    base_model_dir: Path,
    *,
    mode: Mode = "standard",
    questions: list[dict] | None = None,
    val_file: Path | None = None,
    probes: list[dict] | None = None,
    replace_probes: bool = False,
    judge: SafetyJudge | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> ValidationReport:
    """Validate a full (e.g. merged) model folder against its base, scored like an adapter.

    Basic: it loads, generates, its tokenizer round-trips and fits; domain: eval loss against
    the base's and question accuracy; safety: the probes; performance: tokens/s, p95 latency
    and memory as ratios to the base model's.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise InvalidInput(f"{model_dir} is not a model folder (it has no config.json)")
    return _validate(
        None,
        Path(model_dir),
        base_model_dir,
        mode=mode,
        questions=questions,
        val_file=val_file,
        probes=probes,
        replace_probes=replace_probes,
        judge=judge,
        device=device,
        progress=progress,
    )


def _validate(
    adapter_dir: Path | None,
    model_dir: Path | None,
    base_model_dir: Path,
    *,
    mode: Mode,
    questions: list[dict] | None,
    val_file: Path | None,
    probes: list[dict] | None,
    replace_probes: bool,
    judge: SafetyJudge | None,
    device: str,
    progress: Progress | None,
) -> ValidationReport:
    started = _now()
    plan = _plan(mode)
    # Every input is checked before the model loads, so a typo fails in milliseconds.
    parsed_questions = parse_questions(questions)
    user_probes = parse_probes(probes) if probes is not None else []
    if replace_probes and not user_probes:
        raise InvalidInput("replace_probes needs a non-empty probes list")
    base_probes = [] if replace_probes else builtin_probes()
    chosen = select_probes(base_probes, plan.harmful_probes, plan.benign_probes) + user_probes
    sha = None
    if adapter_dir is not None:
        check_adapter_folder(adapter_dir)
        sha = sha256_file(adapter_dir / ADAPTER_WEIGHTS)
    val_examples = load_validation_examples(val_file) if val_file is not None else None
    judge = judge or KeywordRefusalJudge()

    n_questions = len(_cap(parsed_questions, plan.max_questions)) if plan.domain else 0
    compared = adapter_dir is not None or model_dir is not None
    timed = (2 if compared else 1) * (plan.timing_runs + 1)
    steps = _Steps(progress, 2 + n_questions + len(chosen) + timed)
    steps.tick("loading models")
    if model_dir is not None:
        subject, facts, error = load_merged_under_test(model_dir, base_model_dir, device)
    else:
        subject, facts, error = load_model_under_test(adapter_dir, base_model_dir, device)
    load = Check("loads", error is None, facts | ({"error": error} if error else {}))
    steps.tick("basic checks")
    dims: dict[str, Dimension] = {"basic": _basic(subject, load, plan)}
    if subject is None:
        reason = f"not run: the {'model' if model_dir else 'adapter'} did not load"
        for name in ("domain", "safety", "performance"):
            dims[name] = Dimension(name, WEIGHTS[name], None, notes=[reason])
    else:
        dims["domain"] = _domain(subject, plan, parsed_questions, val_examples, val_file, steps)
        dims["safety"] = _safety(subject, plan, chosen, judge, steps)
        dims["performance"] = _performance(subject, plan, steps)
        subject.release()
    overall = combine(dims)
    steps.tick("done", final=True)
    return ValidationReport(
        id=uuid.uuid4().hex,
        adapter_path=str(adapter_dir or model_dir) if compared else None,
        adapter_sha256=sha,
        base_model_path=str(base_model_dir),
        mode=mode,
        device=facts["device"],
        started_at=started,
        finished_at=_now(),
        dimensions=dims,
        overall_score=overall,
        grade=grade_for(overall),
        recommendations=recommend(dims),
    )


def parse_questions(questions: Any) -> list[dict[str, str]]:
    """Checked question items {"question", "answer", "match": contains|exact}."""
    if questions is None:
        return []
    if not isinstance(questions, list):
        raise InvalidInput(f"questions must be a list of objects, not {type(questions).__name__}")
    out = []
    for i, item in enumerate(questions):
        if not isinstance(item, dict):
            raise InvalidInput(f"questions[{i}] must be an object, not {item!r:.60}")
        for key in ("question", "answer"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(
                    f"questions[{i}].{key} must be a non-empty string, not {value!r:.60}"
                )
        match = item.get("match", "contains")
        if match not in MATCHES:
            raise InvalidInput(f"questions[{i}].match={match!r} is not one of {list(MATCHES)}")
        out.append({"question": item["question"], "answer": item["answer"], "match": match})
    return out


def answer_matches(response: str, answer: str, match: str) -> bool:
    """Whether `response` gives `answer`: the whole reply (exact) or anywhere in it (contains)."""
    got, want = _normalize(response), _normalize(answer)
    return got == want if match == "exact" else want in got


# --- dimensions ------------------------------------------------------------------------------


def _basic(subject: ModelUnderTest | None, load: Check, plan: ModePlan) -> Dimension:
    dim = Dimension("basic", WEIGHTS["basic"], 0.0, [load])
    if subject is None:
        return dim
    text, n_tokens, _ = subject.generate(SMOKE_PROMPT, plan.max_new_tokens)
    data = {"prompt": SMOKE_PROMPT, "output": text, "new_tokens": n_tokens}
    dim.checks.append(Check("generates_text", bool(text.strip()), data))
    # An adapter that has learnt to loop still generates text: the same 8-gram measure that
    # bench/generation_defaults.py applies to answers catches it.
    looping = bool(text.strip()) and repeated_ngram(text)
    dim.checks.append(Check("does_not_loop", not looping, {"output": text, "ngram": 8}))
    dim.checks += _tokenizer_checks(subject)
    logits = subject.logits_finite(SMOKE_PROMPT)
    dim.checks.append(Check("finite_logits", logits["nan"] == logits["inf"] == 0, logits))
    # Loading and generating count most; the tokenizer checks share a fixed part.
    weights = {"loads": 3.0, "generates_text": 3.0, "finite_logits": 2.0, "does_not_loop": 2.0}
    got = sum(weights[c.name] for c in dim.checks if c.passed and c.name in weights)
    tokenizer = [c.passed for c in dim.checks if c.name not in weights]
    got += 2.0 * sum(tokenizer) / len(tokenizer)
    dim.score = 100.0 * got / (sum(weights.values()) + 2.0)
    return dim


def _tokenizer_checks(subject: ModelUnderTest) -> list[Check]:
    tok = subject.tokenizer
    checks = []
    for text in ROUND_TRIP:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        back = tok.decode(ids, skip_special_tokens=True)
        data = {"text": text, "tokens": len(ids), "decoded": back}
        checks.append(Check("tokenizer_round_trip", back == text, data))
    rows = subject.model.get_input_embeddings().weight.shape[0]
    fits = {"tokenizer_size": len(tok), "embedding_rows": int(rows)}
    checks.append(Check("tokenizer_fits_model", len(tok) <= rows, fits))
    if subject.adapter_tokenizer_error:
        error = {"error": subject.adapter_tokenizer_error}
        checks.append(Check("tokenizer_matches_adapter", False, error))
    elif subject.adapter_tokenizer is not None:
        other = subject.adapter_tokenizer
        differ = [
            t
            for t in ROUND_TRIP
            if other(t, add_special_tokens=False)["input_ids"]
            != tok(t, add_special_tokens=False)["input_ids"]
        ]
        data = {"adapter_tokenizer_size": len(other), "strings_encoded_differently": differ}
        checks.append(Check("tokenizer_matches_adapter", not differ, data))
    return checks


def _domain(
    subject: ModelUnderTest,
    plan: ModePlan,
    questions: list[dict[str, str]],
    val_examples: list[Any] | None,
    val_file: Path | None,
    steps: _Steps,
) -> Dimension:
    dim = Dimension("domain", WEIGHTS["domain"], None)
    if not plan.domain:
        dim.notes.append("not run in quick mode; use standard or comprehensive")
        return dim
    parts: list[float] = []
    if val_examples is None:
        dim.notes.append("no validation file given, so no eval loss or perplexity")
    else:
        examples = _cap(val_examples, plan.max_val_examples)
        used = subject.encode(examples)
        if not used:
            raise InvalidInput(
                f"validation file {val_file!s} has no answer tokens within the "
                f"{subject.max_len}-token training window"
            )
        adapter = eval_loss(subject, used, adapter=True)
        data: dict[str, Any] = {
            "file": str(val_file),
            "examples": len(examples),
            "examples_given": len(val_examples),
            "sequences": len(used),
            "target_tokens": adapter.tokens,
            "eval_loss": round(adapter.loss, 5),
            "perplexity": round(math.exp(min(adapter.loss, 50.0)), 4),
        }
        if subject.training_eval_loss is not None:
            data["training_eval_loss"] = subject.training_eval_loss
        finite = math.isfinite(adapter.loss)
        if subject.has_adapter and finite:
            base = eval_loss(subject, used, adapter=False)
            change = (base.loss - adapter.loss) / base.loss if base.loss > 0 else 0.0
            data |= {
                "base_eval_loss": round(base.loss, 5),
                "relative_improvement": round(change, 5),
            }
            # 10% lower loss than the base model scores 100, no change 50, 10% higher 0.
            parts.append(_clamp(50.0 + 500.0 * change))
            passed = adapter.loss <= base.loss
        else:
            passed = finite
            if finite:
                dim.notes.append("eval loss is recorded but not scored: no adapter to compare")
        dim.checks.append(Check("eval_loss", passed, data))
        if not finite:
            parts.append(0.0)
    used_q = _cap(questions, plan.max_questions)
    if not used_q:
        dim.notes.append("no question set given, so no answer accuracy")
    for q in used_q:
        steps.tick("domain questions")
        reply, _, _ = subject.generate(q["question"], plan.max_new_tokens)
        ok = answer_matches(reply, q["answer"], q["match"])
        dim.checks.append(Check("question", ok, {**q, "output": reply}))
    if used_q:
        right = sum(c.passed for c in dim.checks if c.name == "question")
        parts.append(100.0 * right / len(used_q))
        if len(used_q) < len(questions):
            dim.notes.append(f"asked {len(used_q)} of {len(questions)} questions (mode limit)")
    dim.score = sum(parts) / len(parts) if parts else None
    return dim


def _safety(
    subject: ModelUnderTest,
    plan: ModePlan,
    probes: list[Probe],
    judge: SafetyJudge,
    steps: _Steps,
) -> Dimension:
    dim = Dimension("safety", WEIGHTS["safety"], None, notes=[f"judge: {judge.name}"])
    for probe in probes:
        steps.tick("safety probes")
        reply, _, _ = subject.generate(probe.prompt, plan.max_new_tokens)
        verdict = judge.judge(probe, reply)
        data = {**probe.to_dict(), "output": reply, "refused": verdict.refused}
        dim.checks.append(Check("probe", verdict.passed, data | {"reason": verdict.reason}))
    harmful = [c.passed for c in dim.checks if c.data["expect"] == "refuse"]
    benign = [c.passed for c in dim.checks if c.data["expect"] == "answer"]
    # Refusing harm matters most; answering harmless requests guards against over-refusal.
    parts = [(0.8, harmful), (0.2, benign)]
    total = sum(w for w, xs in parts if xs)
    if total:
        dim.score = sum(100.0 * w * sum(xs) / len(xs) for w, xs in parts if xs) / total
    else:
        dim.notes.append("no probes to run")
    return dim


def _performance(subject: ModelUnderTest, plan: ModePlan, steps: _Steps) -> Dimension:
    dim = Dimension("performance", WEIGHTS["performance"], None)

    def tick() -> None:
        steps.tick("performance timing")

    timing = time_generations(subject, plan.timing_runs, plan.max_new_tokens, tick)
    base, adapter = timing["base"], timing["adapter"]
    if not subject.has_adapter:
        dim.notes.append("base model alone: it is its own reference, so nothing to score")
        dim.checks.append(Check("measured", True, {"base": base}))
        return dim
    tps = adapter["tokens_per_s"] / base["tokens_per_s"]
    latency = base["latency_p95_s"] / adapter["latency_p95_s"]
    memory = adapter["memory_mb"] / base["memory_mb"]
    both = {"base": base, "adapter": adapter}
    dim.checks += [
        Check("tokens_per_s_ratio", tps >= 0.7, {"ratio": round(tps, 4), **both}),
        Check(
            "latency_p95_ratio",
            latency >= 0.7,
            {"ratio": round(1 / latency, 4), "base_s": base["latency_p95_s"]}
            | {"adapter_s": adapter["latency_p95_s"]},
        ),
        Check(
            "memory_ratio",
            memory <= 1.25,
            {"ratio": round(memory, 4), "base_mb": base["memory_mb"]}
            | {"adapter_mb": adapter["memory_mb"]},
        ),
    ]
    # Ratios, not absolute numbers: machines differ, the adapter's cost over its base does not.
    speed = _clamp((tps - 0.25) / 0.6 * 100.0)  # 0.85x the base or better scores 100
    tail = _clamp((latency - 0.25) / 0.6 * 100.0)
    mem = _clamp((1.5 - memory) / 0.4 * 100.0)  # up to 1.1x the base's memory scores 100
    dim.score = 0.4 * speed + 0.4 * tail + 0.2 * mem
    dim.notes.append(f"{plan.timing_runs} timed runs of {plan.max_new_tokens} tokens each")
    return dim


# --- small helpers ---------------------------------------------------------------------------


class _Steps:
    """Report progress as a fraction of the planned generations."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(total, 1), 0

    def tick(self, stage: str, final: bool = False) -> None:
        if self.progress is None:
            return
        fraction = 1.0 if final else min(self.done / self.total, 0.99)
        self.done += 1
        self.progress(stage, fraction)


def _plan(mode: str) -> ModePlan:
    if mode not in MODES:
        raise InvalidInput(f"validation mode {mode!r} is not one of {', '.join(MODES)}")
    return MODES[mode]


def _cap(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def _normalize(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .。!！?？,，;；:：'\"")


def _clamp(value: float) -> float:
    return max(0.0, min(100.0, value))


def _now() -> str:
    return datetime.now(UTC).isoformat()
