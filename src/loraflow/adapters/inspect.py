"""What an adapter folder holds, read from file headers only: rank, targets, shapes, checksum."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_folder

METADATA_FILE = "loraflow.json"
# vLLM accepts these max_lora_rank values; engines get the smallest that fits.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


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
    # module path in the base model (e.g. model.layers.0.self_attn.q_proj) -> (in, out)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    checksum_sha256: str = ""
    file_size_mb: float = 0.0


def checksum(path: Path) -> str:
    """sha256 over the adapter's config and weights (what serving it depends on)."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        digest.update(name.encode())
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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


def lora_module_shapes(weights: Path) -> dict[str, tuple[int, int]]:
    """Module path -> (in_features, out_features) for each LoRA pair in an adapter file."""
    shapes = tensor_shapes(weights)
    out: dict[str, tuple[int, int]] = {}
    for key, shape in shapes.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.", 1)[0]
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in shapes:
            raise InvalidInput(f"{weights}: {key} has no matching {b_key}")
        module = module.removeprefix("base_model.model.")
        if len(shape) != 2 or len(shapes[b_key]) != 2:
            raise InvalidInput(f"{weights}: {key} is not a 2-D LoRA matrix (shape {shape})")
        out[module] = (int(shape[1]), int(shapes[b_key][0]))
    if not out:
        raise InvalidInput(f"{weights} holds no LoRA tensors (no *.lora_A.* weights)")
    return out


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
    shapes = lora_module_shapes(path / ADAPTER_WEIGHTS)
    return AdapterFacts(
        path=path,
        config=config,
        metadata=meta,
        rank=max([rank, *extra_ranks]),
        alpha=float(config.get("lora_alpha") or rank),
        target_modules=sorted(str(t) for t in targets),
        base_model=str(meta.get("base_model") or config.get("base_model_name_or_path") or ""),
        shapes=shapes,
        checksum_sha256=checksum(path),
        file_size_mb=folder_size_mb(path),
    )


def _ranks(config: dict[str, Any]) -> list[int]:
    pattern = config.get("rank_pattern") or {}
    return [int(v) for v in pattern.values()] if isinstance(pattern, dict) else []


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def base_linear_shapes(base_dir: Path) -> dict[str, tuple[int, int]] | None:
    """Module path -> (in, out) of every 2-D weight of a base model; None for a GGUF file."""
    base_dir = Path(base_dir)
    if base_dir.is_file() or not any(base_dir.glob("*.safetensors")):
        return None  # a GGUF or foreign layout: shapes cannot be read cheaply
    return {
        key[: -len(".weight")]: (int(shape[1]), int(shape[0]))
        for key, shape in base_weight_shapes(base_dir).items()
        if key.endswith(".weight") and len(shape) == 2
    }


def compatibility_problems(
    facts: AdapterFacts, base_shapes: dict[str, tuple[int, int]]
) -> list[str]:
    """Why the adapter cannot apply to a base model with these linear shapes (empty: it can)."""
    problems = []
    for module, (a_in, b_out) in sorted(facts.shapes.items()):
        found = base_shapes.get(module)
        if found is None:
            problems.append(f"{module}: the base model has no such layer")
        elif found != (a_in, b_out):
            problems.append(
                f"{module}: adapter expects in/out {a_in}x{b_out}, base has {found[0]}x{found[1]}"
            )
    return problems


def engine_rank(rank: int) -> int:
    """The smallest vLLM max_lora_rank that holds `rank` (or `rank` itself past the list)."""
    return next((r for r in VLLM_RANKS if r >= rank), rank)
