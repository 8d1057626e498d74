"""Training parameters: the seed's presets (SPEC B), overridable per job, checked by name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from loraflow.errors import InvalidInput

TARGET_PRESETS = {
    "q,v": ["q_proj", "v_proj"],
    "all-linear": "all-linear",
}
LAUNCHERS = ("none", "accelerate", "torchrun")
# The names Hugging Face's TrainingArguments, PEFT's LoraConfig and LLaMA-Factory use for the
# same parameters: accepted everywhere a parameter is given (API form and training_params,
# CLI, UI), so a user typing the name they know is never silently ignored.
ALIASES = {
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "lr",
    "lora_rank": "rank",
    "lora_r": "rank",
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "cutoff_len": "max_len",
    "max_length": "max_len",
    "max_seq_length": "max_len",
    "model_max_length": "max_len",
    "lora_target": "target_modules",
    "val_size": "val_split",
}


@dataclass
class TrainParams:
    """One job's hyper-parameters; defaults are the seed's, tuned for a 6 GB GPU."""

    rank: int = 16
    """LoRA rank r."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / rank)."""
    dropout: float = 0.05
    """Dropout on the LoRA path."""
    epochs: float = 3.0
    """Passes over the training set."""
    batch_size: int = 4
    """Sequences per micro-batch."""
    grad_accum: int = 4
    """Micro-batches per optimizer step (effective batch = batch_size * grad_accum)."""
    lr: float = 2e-4
    """Peak learning rate (linear decay, short warm-up)."""
    max_len: int = 512
    """Longest sequence in tokens; longer chat examples are cut, raw text is windowed."""
    target_modules: str = "q,v"
    """'q,v', 'all-linear', or a comma list of module names."""
    quantization: str = "auto"
    """'auto' (4-bit when CUDA and bitsandbytes exist), '4bit', or 'none'."""
    gradient_checkpointing: str = "auto"
    """'auto' (on for CUDA, off on CPU where it only costs time), 'on', 'off'."""
    val_split: float = 0.1
    """Share of examples held out for eval loss when no validation file is given."""
    chunk_size: int = 2048
    """Characters per chunk of raw novels."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement of eval loss (0: off)."""
    early_stopping_min_delta: float = 0.0
    """The smallest drop of eval loss that counts as an improvement."""
    seed: int = 42
    """Random seed for the split, LoRA init and shuffling."""
    device: str = "auto"
    """auto (CUDA when torch sees a GPU, else CPU), cpu or cuda."""
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA with bf16, and on CPUs where this host's micro-benchmark
    measured bf16 faster; else fp32), 'fp32' or 'bf16'. LoRA weights and optimizer state stay
    fp32 either way."""
    launcher: str = "none"
    """'none' (train in one process), 'accelerate' or 'torchrun' (num_processes DDP processes)."""
    num_processes: int = 1
    """Data-parallel processes: one per GPU; on CPU (gloo) only to test the multi-process path."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainParams:
        """Defaults overridden by `values`; unknown names and bad values raise."""
        values = canonical_names({k: v for k, v in (values or {}).items() if v is not None})
        typed: dict[str, Any] = {}
        for name, value in values.items():
            kind = type(getattr(cls(), name))
            try:
                typed[name] = kind(value)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(
                    f"training parameter {name}={value!r} is not a {kind.__name__}"
                ) from exc
        params = cls(**typed)
        params.check()
        return params

    @classmethod
    def accepted_names(cls) -> list[str]:
        """Every parameter name a job accepts: loraflow's own, then the aliases."""
        return [f.name for f in fields(cls)] + list(ALIASES)

    def check(self) -> None:
        """Raise InvalidInput naming the parameter when a value cannot work."""
        positive = ("rank", "alpha", "epochs", "batch_size", "grad_accum", "lr", "max_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name}={getattr(self, name)!r} must be > 0")
        if not 0 <= self.dropout < 1:
            raise InvalidInput(f"dropout={self.dropout!r} must be in [0, 1)")
        if not 0 <= self.val_split < 1:
            raise InvalidInput(f"val_split={self.val_split!r} must be in [0, 1)")
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise InvalidInput(
                "early_stopping_patience and early_stopping_min_delta must be >= 0 "
                f"(got {self.early_stopping_patience}, {self.early_stopping_min_delta})"
            )
        if self.max_len < 16:
            raise InvalidInput(f"max_len={self.max_len} is too short; use at least 16 tokens")
        for name, allowed in (
            ("quantization", ("auto", "4bit", "none")),
            ("gradient_checkpointing", ("auto", "on", "off")),
            ("device", ("cpu", "cuda", "auto")),
            ("precision", ("auto", "fp32", "bf16")),
            ("launcher", LAUNCHERS),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidInput(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.num_processes < 1:
            raise InvalidInput(f"num_processes={self.num_processes} must be >= 1")
        if self.num_processes > 1 and self.launcher == "none":
            raise InvalidInput(
                f"num_processes={self.num_processes} needs a launcher; launcher='none' trains in "
                "one process",
                hint="use launcher='accelerate' or launcher='torchrun'",
            )
        self.targets()

    def targets(self) -> list[str] | str:
        """The PEFT target_modules value."""
        if self.target_modules in TARGET_PRESETS:
            return TARGET_PRESETS[self.target_modules]
        names = [n.strip() for n in self.target_modules.split(",") if n.strip()]
        if not names:
            raise InvalidInput(
                f"target_modules={self.target_modules!r} is empty; use "
                f"{', '.join(TARGET_PRESETS)} or module names like q_proj,k_proj"
            )
        return names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_names(values: dict[str, Any]) -> dict[str, Any]:
    """`values` under loraflow's own parameter names; unknown or clashing names raise."""
    # In field order, so the hint lists the names as the dataclass declares them.
    own = {f.name: f for f in fields(TrainParams)}
    unknown = sorted(k for k in values if k not in own and k not in ALIASES)
    if unknown:
        raise InvalidInput(
            f"unknown training parameter(s) {unknown}",
            hint=f"accepted: {', '.join(own)}; also accepted as aliases: "
            + ", ".join(f"{a} (= {n})" for a, n in ALIASES.items()),
        )
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name in out and out[name] != value:
            raise InvalidInput(
                f"training parameter {name} is given twice with different values: "
                f"{given_as[name]}={out[name]!r} and {key}={value!r}"
            )
        out[name], given_as[name] = value, key
    return out
