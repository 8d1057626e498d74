"""LoRA adapter files as merge inputs: pairs of factors, scaling, shape checks, dense deltas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.inspect import LoraLayout, checksum, tensor_shapes
from loraflow.adapters.lora_config import check_config
from loraflow.errors import InvalidInput
from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_folder

if TYPE_CHECKING:
    import torch

PREFIX = "base_model.model."
# tensor-name suffix -> (factor, layer kind); PEFT's own names for LoRA factors.
FACTOR_SUFFIXES = {
    ".lora_A.weight": ("A", "linear"),
    ".lora_B.weight": ("B", "linear"),
    ".lora_embedding_A": ("A", "embedding"),
    ".lora_embedding_B": ("B", "embedding"),
}


@dataclass
class LoraPair:
    """The two factors of one adapted layer: delta = scaling * B @ A."""

    module: str
    kind: str  # "linear" or "embedding"
    a_key: str = ""
    b_key: str = ""
    a_shape: tuple[int, ...] = ()
    b_shape: tuple[int, ...] = ()

    @property
    def rank(self) -> int:
        return self.a_shape[0]


@dataclass
class LoraSource:
    """One adapter folder read for merging: config, factor pairs, checksum."""

    path: Path
    config: dict[str, Any]
    pairs: dict[str, LoraPair]
    other_keys: list[str]
    sha256: str
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def weights_file(self) -> Path:
        return self.path / ADAPTER_WEIGHTS

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor of the adapter file (each read once, then kept)."""
        from safetensors import safe_open

        if self._tensors is None:
            self._tensors = {}
        if key not in self._tensors:
            try:
                with safe_open(str(self.weights_file), framework="pt") as fh:
                    self._tensors[key] = fh.get_tensor(key)
            except Exception as exc:  # safetensors raises its own error types for a bad file
                raise InvalidInput(
                    f"adapter {self.path.name}: could not read tensor {key} from "
                    f"{self.weights_file}: {first_line(exc)}"
                ) from exc
        return self._tensors[key]

    def scaling(self, module: str) -> float:
        """PEFT's scaling of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        from peft.utils.other import get_pattern_key

        pair = self.pairs[module]
        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        rank = rank_pattern.get(
            get_pattern_key(rank_pattern.keys(), module), self.config.get("r", 8)
        )
        alpha = alpha_pattern.get(
            get_pattern_key(alpha_pattern.keys(), module), self.config.get("lora_alpha", 8)
        )
        if int(rank) != pair.rank:
            raise InvalidInput(
                f"adapter {self.path}: {pair.a_key} has rank {pair.rank} but "
                f"{ADAPTER_CONFIG} gives r={rank} for {module}"
            )
        if self.config.get("use_rslora"):
            return float(alpha) / math.sqrt(pair.rank)
        return float(alpha) / pair.rank

    def dense_delta(self, module: str) -> torch.Tensor:
        """The layer's weight change in the base weight's layout, in float64."""
        pair = self.pairs[module]
        a = self.tensor(pair.a_key).double()
        b = self.tensor(pair.b_key).double()
        delta = (b @ a) * self.scaling(module)
        # Embedding deltas and fan-in-fan-out (Conv1D) weights are stored transposed.
        if pair.kind == "embedding" or self.config.get("fan_in_fan_out"):
            delta = delta.T
        return delta

    def release(self) -> None:
        """Drop the tensors read so far."""
        self._tensors = None


def read_source(path: Path) -> LoraSource:
    """Read and check one adapter folder (safetensors only) as a merge input."""
    path = Path(path)
    config = check_adapter_folder(path)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidInput(f"adapter at {path} is a {peft_type} adapter; only LORA can be merged")
    shapes = tensor_shapes(path / ADAPTER_WEIGHTS)
    pairs: dict[str, LoraPair] = {}
    other: list[str] = []
    for key, shape in shapes.items():
        for suffix, (factor, kind) in FACTOR_SUFFIXES.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)].removeprefix(PREFIX)
                pair = pairs.setdefault(module, LoraPair(module=module, kind=kind))
                if factor == "A":
                    pair.a_key, pair.a_shape = key, tuple(shape)
                else:
                    pair.b_key, pair.b_shape = key, tuple(shape)
                break
        else:
            other.append(key)
    for pair in pairs.values():
        if not pair.a_key or not pair.b_key:
            have = pair.a_key or pair.b_key
            raise InvalidInput(f"adapter {path}: {have} has no matching lora_A/lora_B partner")
    if not pairs:
        raise InvalidInput(f"adapter {path} holds no LoRA factors (no *.lora_A.weight tensors)")
    layout = LoraLayout(
        pairs={m: (p.a_shape, p.b_shape) for m, p in pairs.items()},
        kinds={m: p.kind for m, p in pairs.items()},
    )
    check_config(path, config, layout)
    return LoraSource(
        path=path, config=config, pairs=pairs, other_keys=sorted(other), sha256=checksum(path)
    )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error from PEFT, torch or safetensors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(exc).__name__


def check_fits_base(source: LoraSource, base_shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise unless every LoRA pair of `source` fits the base layer it targets."""
    fan_in_fan_out = bool(source.config.get("fan_in_fan_out"))
    for module, pair in sorted(source.pairs.items()):
        weight_key = f"{module}.weight"
        weight = base_shapes.get(weight_key)
        if weight is None:
            raise InvalidInput(
                f"adapter {source.path}: {pair.a_key} targets layer {module!r}, "
                f"which the base model does not have ({weight_key} missing)"
            )
        out_dim, in_dim = weight[0], weight[1] if len(weight) > 1 else 1
        if pair.kind == "embedding" or fan_in_fan_out:
            out_dim, in_dim = in_dim, out_dim
        if pair.a_shape[1:2] != (in_dim,):
            raise InvalidInput(
                f"adapter {source.path}: {pair.a_key} has shape {list(pair.a_shape)}, which "
                f"does not fit base tensor {weight_key} of shape {list(weight)} "
                f"(lora_A must be [r, {in_dim}])"
            )
        if pair.b_shape[:1] != (out_dim,) or pair.b_shape[1:2] != pair.a_shape[:1]:
            raise InvalidInput(
                f"adapter {source.path}: {pair.b_key} has shape {list(pair.b_shape)}, which "
                f"does not fit base tensor {weight_key} of shape {list(weight)} "
                f"(lora_B must be [{out_dim}, {pair.rank}])"
            )


def check_same_base(sources: list[LoraSource]) -> None:
    """Raise when two adapters name different base models in their configs."""
    named = [(s, s.base_model.rstrip("/")) for s in sources if s.base_model]
    for source, name in named[1:]:
        first, first_name = named[0]
        if name != first_name:
            raise InvalidInput(
                f"adapters were trained on different base models: {first.path.name} on "
                f"{first_name!r}, {source.path.name} on {name!r}; merge adapters of one base model"
            )


def check_plain_lora(source: LoraSource, method: str) -> None:
    """Raise when an adapter holds parts a factor-level ("adapter") merge cannot combine."""
    hint = 'merge with into="model", which folds each adapter into the base first'
    if source.config.get("use_dora"):
        raise InvalidInput(
            f"adapter {source.path} is a DoRA adapter; {method!r} cannot combine DoRA "
            f"magnitudes into one adapter",
            hint=hint,
        )
    if source.other_keys:
        raise InvalidInput(
            f"adapter {source.path} holds tensors besides LoRA factors "
            f"({', '.join(source.other_keys[:3])}); {method!r} cannot combine them into "
            f"one adapter",
            hint=hint,
        )
    for pair in source.pairs.values():
        if pair.kind != "linear" or len(pair.a_shape) != 2 or len(pair.b_shape) != 2:
            raise InvalidInput(
                f"adapter {source.path}: {pair.a_key} is not a 2-D linear LoRA factor; "
                f"{method!r} combines only linear layers into one adapter",
                hint=hint,
            )
