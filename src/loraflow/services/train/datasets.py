"""Training datasets and base models: prepare, upload, validate, list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from loraflow.config import Settings
from loraflow.datasets.encode import IGNORE, encode_examples
from loraflow.datasets.formats import check_type, load_examples
from loraflow.datasets.prepare import PrepareReport, prepare, token_stats
from loraflow.datasets.records import DATA_SUFFIXES
from loraflow.datasets.sample import write_sample
from loraflow.errors import InvalidInput, LoraflowError, NotFound, UnsupportedFile
from loraflow.models.bundled import BUNDLED_MODELS, smollm2_gguf_path
from loraflow.models.resolve import list_local_models, resolve_base_model
from loraflow.services.infra.uploads import safe_filename, save_upload

# Uploads are stored under generated names only; this is the shape of such a name.
_STORED = re.compile(r"^[0-9a-f]{32}\.(json|jsonl|txt)$")


def save_dataset_upload(
    rt: Any, filename: str, stream: BinaryIO, dataset_type: str
) -> dict[str, Any]:
    """Store an uploaded dataset (size-limited, generated name) after checking its format."""
    kind = check_type(dataset_type)
    display = safe_filename(filename)
    suffix = Path(display).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise UnsupportedFile(
            f"{display!r} has type {suffix or '(none)'!r}; datasets must be "
            f"{', '.join(DATA_SUFFIXES)}"
        )
    path, display = save_upload(rt.settings, display, stream)
    try:
        examples = load_examples(path, kind, json_limits=rt.settings.json_limits(upload=True))
    except LoraflowError as exc:
        path.unlink(missing_ok=True)
        # Messages name the stored file; the user knows it by the name they uploaded.
        exc.message = exc.message.replace(path.name, display)
        raise
    except BaseException:
        # Whatever failed, a refused upload leaves nothing behind in the data dir.
        path.unlink(missing_ok=True)
        raise
    size_mb = round(path.stat().st_size / (1024 * 1024), 4)
    return {
        "filename": path.name,
        "path": str(path),
        "size_mb": size_mb,
        "message": f"{display} uploaded: {len(examples)} {kind} examples",
        "original_filename": display,
        "dataset_type": kind,
        "examples": len(examples),
    }


def dataset_path(rt: Any, name: str) -> Path:
    """The stored upload called `name`; only generated names inside the uploads dir."""
    name = (name or "").strip()
    path = rt.settings.uploads_dir / name
    if not _STORED.match(name) or not path.is_file():
        raise NotFound(
            f"dataset {name!r} was not uploaded here",
            hint="upload it with POST /api/simple-lora/upload-dataset and use the returned "
            "'filename'",
        )
    return path


def available_models(rt: Any) -> list[dict[str, Any]]:
    """Base models that can be trained: bundled ones and those found in CACHE_DIR."""
    found = [m for m in list_local_models(rt.settings.cache_path) if m["kind"] != "gguf"]
    names = {m["name"] for m in found}
    for key in BUNDLED_MODELS:
        if key not in names:
            try:
                gguf = smollm2_gguf_path()
            except LoraflowError:
                continue
            size = round(gguf.stat().st_size / (1024 * 1024), 1)
            found.append({"name": key, "kind": "bundled", "path": str(gguf), "size_mb": size})
    return found


def prepare_dataset(
    settings: Settings,
    inputs: list[Path] | None,
    out_dir: Path | None,
    *,
    sample: bool = False,
    dataset_type: str | None = None,
    chunk_size: int = 2048,
    val_split: float = 0.1,
    max_len: int = 512,
) -> tuple[PrepareReport, str | None]:
    """Write train/val files from data/raw (or `inputs`); returns the report and a warning."""
    raw = settings.data_path / "raw"
    if sample:
        write_sample(raw)
    tokenizer, warning = None, None
    try:
        tokenizer = _tokenizer(settings)
    except LoraflowError as exc:
        warning = f"no token statistics: {exc.message}"
    report = prepare(
        inputs or [raw],
        out_dir or settings.data_path / "processed",
        dataset_type=dataset_type,
        chunk_size=chunk_size,
        val_split=val_split,
        tokenizer=tokenizer,
        max_len=max_len,
    )
    return report, warning


# The formats whose rows the preview can show as the model sees them (supervised ones).
PREVIEWED = ("alpaca", "sharegpt", "raw")
HISTOGRAM_BINS = 8


def preview_dataset(
    rt: Any,
    name: str,
    dataset_type: str,
    *,
    base_model: str | None = None,
    max_len: int = 512,
    rows: int = 3,
) -> dict[str, Any]:
    """An uploaded dataset as the model will see it: the first rows with the chat template
    applied, split into the parts that are trained on and the parts that are only read;
    a histogram of sequence lengths in tokens; and how many exceed `max_len` (cut there)."""
    if not 1 <= max_len <= 32768:
        raise InvalidInput(f"max_len={max_len} must be between 1 and 32768")
    if not 0 <= rows <= 20:
        raise InvalidInput(f"rows={rows} must be between 0 and 20")
    path = dataset_path(rt, name)
    kind = check_type(dataset_type)
    if kind not in PREVIEWED:
        raise InvalidInput(
            f"the preview shows {', '.join(PREVIEWED)} datasets; {kind!r} is not one of them"
        )
    examples = load_examples(path, kind, json_limits=rt.settings.json_limits(upload=True))
    tokenizer = _tokenizer(rt.settings, base_model)
    # Uncut, to count what max_len would cut; the rows shown are cut as in training.
    encoded = encode_examples(examples, tokenizer, 10**9)
    lengths = [len(e.input_ids) for e in encoded]
    shown = []
    for e in encoded[:rows]:
        ids, labels = e.input_ids[:max_len], e.labels[:max_len]
        shown.append(
            {
                "tokens": len(e.input_ids),
                "trained_tokens": sum(1 for x in labels if x != IGNORE),
                "cut": len(e.input_ids) > max_len,
                "segments": _segments(tokenizer, ids, labels),
            }
        )
    return {
        "dataset_type": kind,
        "base_model": base_model or rt.settings.base_model_name,
        "max_len": max_len,
        "examples": len(examples),
        "sequences": len(lengths),
        "rows": shown,
        "tokens": token_stats(lengths, max_len),
        "histogram": _histogram(lengths, max_len),
    }


def _segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[dict[str, Any]]:
    """The text of a sequence in runs of trained (loss) and read-only tokens."""
    out: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            out.append({"text": text, "trained": labels[start] != IGNORE})
            start = i
    return out


def _histogram(lengths: list[int], max_len: int) -> list[dict[str, Any]]:
    """Sequence lengths in HISTOGRAM_BINS equal bins up to max_len, then one bin above it."""
    width = max(1, -(-max_len // HISTOGRAM_BINS))
    bins: list[dict[str, Any]] = [
        {"from": i * width + 1, "to": min((i + 1) * width, max_len), "count": 0}
        for i in range(HISTOGRAM_BINS)
        if i * width < max_len
    ]
    over = 0
    for n in lengths:
        if n > max_len:
            over += 1
        else:
            bins[min((max(n, 1) - 1) // width, len(bins) - 1)]["count"] += 1
    return [*bins, {"from": max_len + 1, "to": None, "count": over}]


def _tokenizer(settings: Settings, base_model: str | None = None) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_base_model(base_model or settings.base_model_name, settings.cache_path)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    return AutoTokenizer.from_pretrained(resolved.path, **kwargs)
