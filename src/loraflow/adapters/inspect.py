"""What an adapter folder holds, read from file headers only: rank, targets, shapes, checksum."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loraflow.adapters.checksums import checksum
from loraflow.adapters.checksums import sha256_file as sha256_file
from loraflow.adapters.lora_config import check_config
from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_folder

METADATA_FILE = "loraflow.json"
# vLLM accepts these max_lora_rank values; engines get the smallest that fits.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_PREFIX = "base_model.model."
# PEFT's saved key suffixes: (suffix, layer kind, which factor).
LORA_SUFFIXES = (
    (".lora_A.weight", "linear", "A"),
    (".lora_B.weight", "linear", "B"),
    (".lora_embedding_A", "embedding", "A"),
    (".lora_embedding_B", "embedding", "B"),
)


@dataclass(frozen=True)
class AdapterFacts:
    """Everything the registry records about an adapter folder without loading a model."""

    path: Path
    config: dict[str, Any]
    metadata: dict[str, Any]
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    # module path in the base model (e.g. model.layers.0.self_attn.q_proj) -> LoRA factors
    layout: LoraLayout | None = None
    checksum_sha256: str = ""
    file_size_mb: float = 0.0


@dataclass(frozen=True)
class LoraLayout:
    """The shapes of an adapter's LoRA factors per module, and of its full tensors."""

    pairs: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # module -> (A shape, B shape)
    kinds: dict[str, str]  # module -> "linear" | "embedding"
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)  # e.g. modules_to_save


def split_lora_key(key: str) -> tuple[str, str, str] | None:
    """(module, kind, "A" | "B") of a saved LoRA tensor name; None for other tensors."""
    name = key.removeprefix(ADAPTER_PREFIX)
    for suffix, kind, half in LORA_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind, half
    return None


def folder_size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / (1024 * 1024), 3)


def read_metadata(path: Path) -> dict[str, Any]:
    """The optional loraflow.json beside the adapter (training or merge metadata)."""
    meta = path / METADATA_FILE
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def tensor_shapes(weights: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, from its header only."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # a truncated or foreign file
        raise InvalidInput(f"{weights} is not a readable safetensors file: {exc}") from exc


def lora_layout(weights: Path) -> LoraLayout:
    """The LoRA factor shapes of an adapter file, from its header; raise on an unpaired factor."""
    return group_lora(
        {k: tuple(int(n) for n in v) for k, v in tensor_shapes(weights).items()}, weights
    )


def group_lora(tensors: dict[str, Any], source: Path) -> LoraLayout:
    """Group saved tensors (or their shapes) into LoRA pairs per module plus full tensors.

    `tensors` maps saved names to tensors or shape tuples; the layout holds shapes only.
    """
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    kinds: dict[str, str] = {}
    extra: dict[str, tuple[int, ...]] = {}
    for key, value in tensors.items():
        shape = tuple(int(n) for n in getattr(value, "shape", value))
        split = split_lora_key(key)
        if split is None:
            extra[key.removeprefix(ADAPTER_PREFIX)] = shape
            continue
        module, kind, half = split
        halves.setdefault(module, {})[half] = shape
        kinds[module] = kind
    pairs: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for module, parts in halves.items():
        if set(parts) != {"A", "B"}:
            have = next(iter(parts))
            lacks = "B" if have == "A" else "A"
            raise InvalidInput(
                f"adapter at {source} has lora_{have} but no lora_{lacks} for module {module!r}"
            )
        if len(parts["A"]) != 2 or len(parts["B"]) != 2:
            raise InvalidInput(
                f"adapter at {source}: {module} is not a 2-D LoRA pair "
                f"(lora_A {list(parts['A'])}, lora_B {list(parts['B'])})"
            )
        pairs[module] = (parts["A"], parts["B"])
    if not pairs:
        raise InvalidInput(f"adapter at {source} holds no LoRA weights (lora_A/lora_B)")
    return LoraLayout(pairs=pairs, kinds=kinds, extra=extra)


def inspect_adapter(path: Path) -> AdapterFacts:
    """Read an adapter folder's config, metadata, LoRA shapes and checksum."""
    path = Path(path)
    config = check_adapter_folder(path)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidInput(f"adapter at {path} is a {peft_type} adapter; only LoRA is supported")
    meta = read_metadata(path)
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    try:
        rank = int(config.get("r") or 0)
        extra_ranks = _ranks(config)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path / ADAPTER_CONFIG}: r and rank_pattern must be numbers") from exc
    if rank < 1:
        raise InvalidInput(f"{path / ADAPTER_CONFIG}: r must be a positive rank, not {rank!r}")
    layout = lora_layout(path / ADAPTER_WEIGHTS)
    check_config(path, config, layout)
    return AdapterFacts(
        path=path,
        config=config,
        metadata=meta,
        rank=max([rank, *extra_ranks]),
        alpha=float(config.get("lora_alpha") or rank),
        target_modules=sorted(str(t) for t in targets),
        base_model=str(meta.get("base_model") or config.get("base_model_name_or_path") or ""),
        layout=layout,
        checksum_sha256=checksum(path),
        file_size_mb=folder_size_mb(path),
    )


def _ranks(config: dict[str, Any]) -> list[int]:
    pattern = config.get("rank_pattern") or {}
    return [int(v) for v in pattern.values()] if isinstance(pattern, dict) else []


def read_base_config(base_model_dir: Path) -> dict[str, Any]:
    """The base model's config.json as a dict; raise if the folder is not a model folder."""
    base_model_dir = Path(base_model_dir)
    path = base_model_dir / "config.json"
    if base_model_dir.is_file() and base_model_dir.suffix.lower() == ".gguf":
        raise InvalidInput(
            f"base model {base_model_dir} is a .gguf file; this needs the model as a "
            f"safetensors folder (with config.json)"
        )
    if not path.is_file():
        raise NotFound(f"base model folder {base_model_dir} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidInput(f"{path} must hold a JSON object")
    return config


def base_weight_shapes(base_model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors base model folder, from file headers only.

    A tied lm_head (tie_word_embeddings) is listed with the embedding's shape.
    """
    base_model_dir = Path(base_model_dir)
    config = read_base_config(base_model_dir)
    files = sorted(base_model_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in base_model_dir.glob("*.bin"))
        if pickles:
            raise InvalidInput(
                f"base model at {base_model_dir} has only pickle weights {pickles}; loraflow "
                f"reads only *.safetensors models because pickle files can run code when loaded"
            )
        raise NotFound(f"base model at {base_model_dir} has no *.safetensors weight files")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update({k: tuple(v) for k, v in tensor_shapes(f).items()})
    if "lm_head.weight" not in shapes and config.get("tie_word_embeddings", False):
        embed = shapes.get("model.embed_tokens.weight")
        if embed is not None:
            shapes["lm_head.weight"] = embed
    return shapes


def shape_problems(layout: LoraLayout, base_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Why an adapter cannot apply to a base model with these weight shapes (empty: it can).

    Each problem names the layer and both shapes, e.g. for a base model of another size.
    """
    problems = []
    for module, (a, b) in sorted(layout.pairs.items()):
        weight = base_shapes.get(f"{module}.weight")
        if weight is None:
            problems.append(f"{module}: the base model has no such layer")
            continue
        if len(weight) != 2:
            problems.append(f"{module}.weight has shape {list(weight)}, not a 2-D matrix")
            continue
        if layout.kinds.get(module) == "embedding":
            # PEFT keeps embedding LoRAs as A (r, num_embeddings) and B (embedding_dim, r).
            want_a, want_b = (a[0], weight[0]), (weight[1], b[1])
            need, have = (a[1], b[0]), (weight[0], weight[1])
        else:
            want_a, want_b = (a[0], weight[1]), (weight[0], b[1])
            need, have = (a[1], b[0]), (weight[1], weight[0])
        if tuple(a) != want_a or tuple(b) != want_b:
            problems.append(
                f"{module}.weight has shape {list(weight)} in the base model, but the adapter's "
                f"lora_A is {list(a)} and lora_B is {list(b)}, which multiply to "
                f"{[b[0], a[1]]} (adapter expects in/out {need[0]}x{need[1]}, "
                f"base has {have[0]}x{have[1]})"
            )
    for name, shape in sorted(layout.extra.items()):
        want = base_shapes.get(name)
        if want is not None and tuple(shape) != tuple(want):
            problems.append(
                f"{name} has shape {list(want)} in the base model and {list(shape)} in the adapter"
            )
    return problems


def check_fits(
    layout: LoraLayout,
    adapter_dir: Path,
    base_dir: Path,
    trained_for: str = "",
    *,
    strict: bool = False,
    hint: str = "use the base model the adapter was trained on",
) -> None:
    """Raise InvalidInput naming the layers and shapes when an adapter does not fit a base.

    Unless `strict`, a base model that is not a safetensors folder (e.g. a GGUF file) passes:
    its shapes cannot be read cheaply, and loading it reports any mismatch.
    """
    base_dir = Path(base_dir)
    if not strict and (base_dir.is_file() or not any(base_dir.glob("*.safetensors"))):
        return
    problems = shape_problems(layout, base_weight_shapes(base_dir))
    if not problems:
        return
    shown = "; ".join(problems[:3])
    if len(problems) > 3:
        shown += f"; and {len(problems) - 3} more"
    trained = f" (trained for {trained_for!r})" if trained_for else ""
    raise InvalidInput(
        f"adapter at {adapter_dir}{trained} does not fit the base model at {base_dir}: {shown}",
        hint=hint,
    )


def engine_rank(rank: int) -> int:
    """The smallest vLLM max_lora_rank that holds `rank` (or `rank` itself past the list)."""
    return next((r for r in VLLM_RANKS if r >= rank), rank)
