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
# sft: imitate the answers; dpo, orpo: prefer the chosen answer of a pair over the rejected
# one; kto: answers labelled desirable or not.
METHODS = ("sft", "dpo", "orpo", "kto")
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
# The dataset types each method trains on (a KTO job also takes pairs, as two answers).
METHOD_DATASETS = {
    "sft": ("alpaca", "sharegpt", "raw"),
    "dpo": ("preference",),
    "orpo": ("preference",),
    "kto": ("kto", "preference"),
}
LOSS_TYPES = ("sigmoid", "ipo", "hinge")
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


@dataclass(frozen=True)
class CliOption:
    """A parameter as an option of `loraflow train`."""

    help: str
    flags: tuple[str, ...] = ()
    """The option's names; none given: --NAME with dashes."""


@dataclass(frozen=True)
class FormField:
    """A parameter as a declared (typed, documented) form field of POST /train, where its
    name or description is not the default."""

    name: str | None = None
    """The field's name where it is one of the aliases; None: the parameter's name."""
    description: str | None = None


@dataclass(frozen=True)
class UiField:
    """A parameter as a field of the UI's Training form."""

    label: str
    """A UI label key, or the label itself where it is not translated."""
    elem_id: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    unset: str | None = None
    """A dropdown's first choice, sent as "" and meaning "not set" (this label key)."""
    choices: tuple[str, ...] | None = None
    """The dropdown's order of the parameter's choices, where it differs from theirs."""


@dataclass(frozen=True)
class Param:
    """One training parameter: what it is, its valid values, and how each surface shows it.

    Its type and default are TrainParams' field of the same name; its other names, ALIASES'.
    """

    name: str
    help: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    """Suggested values where any other is allowed too."""
    cli: CliOption | None = None
    form: FormField | None = None
    ui: UiField | None = None

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def default(self) -> Any:
        return getattr(TrainParams(), self.name)


@dataclass
class TrainParams:
    """One job's hyper-parameters; defaults are the seed's, tuned for a 6 GB GPU.

    What each one means, its valid values and how the API, CLI and UI show it: PARAMS.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    epochs: float = 3.0
    batch_size: int = 4
    grad_accum: int = 4
    lr: float = 2e-4
    max_len: int = 512
    target_modules: str = "q,v"
    quantization: str = "auto"
    gradient_checkpointing: str = "auto"
    val_split: float = 0.1
    chunk_size: int = 2048
    max_steps: int = 0
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    launcher: str = "none"
    num_processes: int = 1
    method: str = "sft"
    beta: float = 0.1
    loss_type: str = "sigmoid"
    init_adapter: str = ""

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
        for p in PARAMS.values():
            if p.gt is not None and getattr(self, p.name) <= p.gt:
                raise InvalidInput(f"{p.name}={getattr(self, p.name)!r} must be > {p.gt:g}")
        for p in PARAMS.values():
            low = p.ge or 0
            if p.lt is not None and not low <= getattr(self, p.name) < p.lt:
                raise InvalidInput(
                    f"{p.name}={getattr(self, p.name)!r} must be in [{low:g}, {p.lt:g})"
                )
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise InvalidInput(
                "early_stopping_patience and early_stopping_min_delta must be >= 0 "
                f"(got {self.early_stopping_patience}, {self.early_stopping_min_delta})"
            )
        if self.max_len < 16:
            raise InvalidInput(f"max_len={self.max_len} is too short; use at least 16 tokens")
        for p in PARAMS.values():
            if p.choices and getattr(self, p.name) not in p.choices:
                raise InvalidInput(f"{p.name}={getattr(self, p.name)!r} is not one of {p.choices}")
        if self.method in PREFERENCE_METHODS and self.early_stopping_patience > 0:
            raise InvalidInput(
                f"early_stopping_patience watches eval loss, which method={self.method!r} does "
                "not compute; set it to 0",
                hint="preference jobs report held-out preference accuracy before and after",
            )
        if self.method in PREFERENCE_METHODS and self.launcher != "none":
            raise InvalidInput(
                f"method={self.method!r} trains in one process; launcher={self.launcher!r} "
                "is for sft jobs"
            )
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


def _declare(*params: Param) -> dict[str, Param]:
    found = {p.name: p for p in params}
    assert list(found) == [f.name for f in fields(TrainParams)], "one Param a field, in order"
    return found


# Every training parameter, in TrainParams' order. POST /train's form fields, the options of
# `loraflow train` and the UI's Training form are rendered from these; each surface only picks
# which ones it shows, and in what order.
PARAMS = _declare(
    Param(
        "rank",
        "LoRA rank r.",
        gt=0,
        cli=CliOption("LoRA rank (16).", ("--rank", "--lora-rank", "--lora-r")),
        form=FormField("lora_r", "aliases: rank, lora_rank"),
        ui=UiField("LoRA r", minimum=1),
    ),
    Param(
        "alpha",
        "LoRA alpha (scale = alpha / rank).",
        gt=0,
        cli=CliOption("LoRA alpha (32).", ("--alpha", "--lora-alpha")),
        form=FormField("lora_alpha"),
        ui=UiField("LoRA alpha", minimum=1),
    ),
    Param(
        "dropout",
        "Dropout on the LoRA path.",
        ge=0,
        lt=1,
        cli=CliOption("LoRA dropout (0.05).", ("--dropout", "--lora-dropout")),
        ui=UiField("dropout", minimum=0, maximum=0.99),
    ),
    Param(
        "epochs",
        "Passes over the training set.",
        gt=0,
        cli=CliOption("Epochs (3).", ("--epochs", "--num-train-epochs")),
        form=FormField(description="alias: num_train_epochs"),
        ui=UiField("epochs", "train-epochs", minimum=0.01),
    ),
    Param(
        "batch_size",
        "Sequences per micro-batch.",
        gt=0,
        cli=CliOption("Micro-batch size (4).", ("--batch-size", "--per-device-train-batch-size")),
        form=FormField(description="alias: per_device_train_batch_size"),
        ui=UiField("batch_size", "train-batch-size", minimum=1),
    ),
    Param(
        "grad_accum",
        "Micro-batches per optimizer step (effective batch = batch_size * grad_accum).",
        gt=0,
        cli=CliOption(
            "Gradient accumulation (4).", ("--grad-accum", "--gradient-accumulation-steps")
        ),
        ui=UiField("grad_accum", "train-grad-accum", minimum=1),
    ),
    Param(
        "lr",
        "Peak learning rate (linear decay, short warm-up).",
        gt=0,
        cli=CliOption("Learning rate (2e-4).", ("--lr", "--learning-rate")),
        form=FormField("learning_rate", "alias: lr"),
        ui=UiField("learning_rate", minimum=0),
    ),
    Param(
        "max_len",
        "Longest sequence in tokens; longer chat examples are cut, raw text is windowed.",
        gt=0,
        cli=CliOption("Max sequence tokens (512).", ("--max-len", "--cutoff-len", "--max-length")),
        form=FormField("max_length", "aliases: max_len, cutoff_len"),
        ui=UiField("max_length", "train-max-len", minimum=16),
    ),
    Param(
        "target_modules",
        "'q,v', 'all-linear', or a comma list of module names.",
        presets=tuple(TARGET_PRESETS),
        cli=CliOption("q,v | all-linear | names."),
        ui=UiField("target_modules"),
    ),
    Param(
        "quantization",
        "'auto' (4-bit when CUDA and bitsandbytes exist), '4bit', or 'none'.",
        choices=("auto", "4bit", "none"),
        cli=CliOption("auto (4-bit on CUDA with bitsandbytes) | 4bit | none."),
        form=FormField(description="auto (4-bit QLoRA on CUDA with bitsandbytes), 4bit or none"),
        ui=UiField("quantization", "train-quantization"),
    ),
    Param(
        "gradient_checkpointing",
        "'auto' (on for CUDA, off on CPU where it only costs time), 'on', 'off'.",
        choices=("auto", "on", "off"),
    ),
    Param(
        "val_split",
        "Share of examples held out for eval loss when no validation file is given.",
        ge=0,
        lt=1,
        cli=CliOption("Share of --data held out for eval loss without --val-data (0.1)."),
        ui=UiField("val_split", "train-val-split", minimum=0, maximum=0.9),
    ),
    Param("chunk_size", "Characters per chunk of raw novels."),
    Param(
        "max_steps",
        "Stop after this many optimizer steps (0: run all epochs).",
        cli=CliOption("Stop after N steps (0: all)."),
        ui=UiField("max_steps", "train-max-steps", minimum=0),
    ),
    Param(
        "early_stopping_patience",
        "Stop after this many evaluations without improvement of eval loss (0: off).",
        ge=0,
        cli=CliOption("Early stopping: evaluations without improvement (0: off).", ("--patience",)),
    ),
    Param(
        "early_stopping_min_delta",
        "The smallest drop of eval loss that counts as an improvement.",
        ge=0,
        cli=CliOption("Early stopping: smallest eval-loss drop that counts.", ("--min-delta",)),
    ),
    Param("seed", "Random seed for the split, LoRA init and shuffling."),
    Param(
        "device",
        "auto (CUDA when torch sees a GPU, else CPU), cpu or cuda.",
        choices=("cpu", "cuda", "auto"),
        cli=CliOption("cpu | cuda | auto (default: TRAINING_DEVICE)."),
        form=FormField(
            description="auto (CUDA when there is a GPU), cuda or cpu; default TRAINING_DEVICE"
        ),
        ui=UiField(
            "training_device",
            "train-device",
            unset="device_from_settings",
            choices=("auto", "cuda", "cpu"),
        ),
    ),
    Param(
        "precision",
        "'auto' (bf16 autocast on CUDA with bf16, and on CPUs where this host's micro-benchmark "
        "measured bf16 faster; else fp32), 'fp32' or 'bf16'. LoRA weights and optimizer state "
        "stay fp32 either way.",
        choices=("auto", "fp32", "bf16"),
    ),
    Param(
        "launcher",
        "'none' (train in one process), 'accelerate' or 'torchrun' (num_processes DDP processes).",
        choices=LAUNCHERS,
        cli=CliOption("none | accelerate | torchrun: train in num-processes DDP processes."),
        form=FormField(description="none, accelerate or torchrun"),
    ),
    Param(
        "num_processes",
        "Data-parallel processes: one per GPU; on CPU (gloo) only to test the multi-process path.",
        ge=1,
        cli=CliOption("Processes (one per GPU; on CPU only for testing)."),
        form=FormField(description="DDP processes (one per GPU)"),
    ),
    Param(
        "method",
        "'sft' (imitate the answers), 'dpo' or 'orpo' (prefer each pair's chosen answer over "
        "its rejected one; preference datasets), 'kto' (answers labelled desirable or not; kto "
        "or preference datasets).",
        choices=METHODS,
        cli=CliOption("sft | dpo | orpo | kto (preference tuning needs a preference dataset)."),
        form=FormField(description="sft (default), dpo, orpo or kto"),
        ui=UiField("method", "train-method"),
    ),
    Param(
        "beta",
        "Preference strength (dpo, kto: how far from the reference the policy may move, "
        "typical 0.1-0.5; orpo: weight of the odds-ratio term, typical 0.1). Ignored by sft.",
        gt=0,
        cli=CliOption("Preference beta for dpo/orpo/kto (0.1)."),
        form=FormField(description="dpo/kto: KL strength; orpo: odds-ratio weight (0.1)"),
        ui=UiField("beta", "train-beta", minimum=0.001),
    ),
    Param(
        "loss_type",
        "DPO loss: 'sigmoid' (the DPO paper's), 'ipo' (squared, length-normalised) or 'hinge'.",
        choices=LOSS_TYPES,
        cli=CliOption("DPO loss: sigmoid | ipo | hinge."),
        form=FormField(description="DPO loss: sigmoid (default), ipo or hinge"),
    ),
    Param(
        "init_adapter",
        "A registered adapter to continue (its weights are the start, and for dpo/kto the "
        "frozen reference); empty: a fresh LoRA on the base, whose reference is the base. "
        "rank, alpha and target_modules then come from that adapter.",
        cli=CliOption("Registered adapter to continue (default: a fresh LoRA)."),
        form=FormField(description="registered adapter to continue (name or id)"),
    ),
)
