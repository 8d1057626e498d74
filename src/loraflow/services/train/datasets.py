"""Training datasets and base models: prepare, upload, validate, list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from loraflow.config import Settings
from loraflow.datasets.formats import check_type, load_examples
from loraflow.datasets.prepare import PrepareReport, prepare
from loraflow.datasets.records import DATA_SUFFIXES
from loraflow.datasets.sample import write_sample
from loraflow.errors import LoraflowError, NotFound, UnsupportedFile
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


def _tokenizer(settings: Settings) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_base_model(settings.base_model_name, settings.cache_path)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    return AutoTokenizer.from_pretrained(resolved.path, **kwargs)
