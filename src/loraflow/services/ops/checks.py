"""Configuration check: every setting, and whether each model, path and service is usable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loraflow import db
from loraflow.config import Settings
from loraflow.engines.remote import make_remote_engine
from loraflow.errors import LoraflowError
from loraflow.hardware import hardware_summary
from loraflow.models.adapters import check_adapter_folder, discover_adapters
from loraflow.models.resolve import describe_base_model
from loraflow.rag.backends import index_name, open_index
from loraflow.rag.embed import load_embedder


@dataclass
class Check:
    """One verdict; a failed required check makes the whole check fail."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def _writable(path: Path) -> tuple[bool, str]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return True, f"{path} (writable)"
    return False, f"{path} is not writable; set LORAFLOW_DATA_DIR to a writable folder"


def run_checks(settings: Settings) -> list[Check]:
    """Check everything a start needs, without starting the service."""
    checks: list[Check] = []
    ok, detail = _writable(settings.data_path)
    checks.append(Check("data dir", ok, detail))

    try:
        engine = db.make_engine(settings.db_url)
        engine.dispose()
        checks.append(Check("database", True, db.redact_url(settings.db_url)))
    except LoraflowError as exc:
        checks.append(Check("database", False, str(exc)))

    try:
        checks.append(
            Check(
                "base model",
                True,
                describe_base_model(settings.base_model_name, settings.cache_path),
            )
        )
    except LoraflowError as exc:
        checks.append(Check("base model", False, str(exc), required=settings.use_lora_default))

    adapters = discover_adapters(settings.lora_path)
    if not adapters:
        checks.append(
            Check("LoRA adapters", False, f"none found in {settings.lora_path}", required=False)
        )
    for name, path in adapters.items():
        try:
            cfg = check_adapter_folder(path)
            detail = f"{path} (r={cfg.get('r')}, base={cfg.get('base_model_name_or_path')})"
            checks.append(Check(f"adapter {name}", True, detail))
        except LoraflowError as exc:
            checks.append(Check(f"adapter {name}", False, str(exc), required=False))

    try:
        embedder = load_embedder(settings.embedding_model, device="cpu", settings=settings)
        checks.append(Check("embedding model", True, f"{embedder.name} ({embedder.dim}-d)"))
        try:
            folder = settings.vector_store_dir
            store = open_index(settings, folder, embedder.name, embedder.dim)
            n = len(store.list_documents())
            where = str(folder)
            if settings.vector_store != "faiss":
                where = f"{settings.vector_store} collection {index_name(settings, folder)}"
            checks.append(Check("vector store", True, f"{where} ({n} documents)"))
        except LoraflowError as exc:
            checks.append(Check("vector store", False, str(exc)))
    except LoraflowError as exc:
        checks.append(Check("embedding model", False, str(exc)))

    if settings.training_executor == "ray":
        from loraflow.training.ray_executor import check_cluster

        request = {
            "CPU": settings.ray_num_cpus,
            "GPU": settings.ray_num_gpus,
            **settings.ray_resources,
        }
        ok, detail = check_cluster(settings.ray_address, request)
        checks.append(Check("training executor (ray)", ok, detail))

    # Required only when it answers by default (USE_LORA_DEFAULT=false): else the local model does.
    with make_remote_engine(settings, timeout=5.0) as remote:
        health = remote.health()
    checks.append(
        Check(
            f"remote engine ({settings.remote_backend})",
            health.ok,
            health.detail,
            required=not settings.use_lora_default,
        )
    )
    return checks


def settings_rows(settings: Settings) -> list[tuple[str, str]]:
    """Each setting with its environment name and effective value (secrets hidden)."""
    rows: list[tuple[str, str]] = []
    for name, field in type(settings).model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None and hasattr(alias, "choices") else name.upper()
        value = getattr(settings, name)
        if name == "database_url":
            value = db.redact_url(settings.db_url)
        rows.append((str(env), str(value)))
    rows.append(("(resolved) LORA_MODEL_PATH", str(settings.lora_path)))
    rows.append(("(resolved) CACHE_DIR", str(settings.cache_path)))
    rows.append(("(resolved) VECTOR_STORE_PATH", str(settings.vector_store_dir)))
    if settings.training_device is not None:
        source = "TRAINING_DEVICE"
    elif "device" in settings.model_fields_set:
        source = "follows DEVICE"
    else:
        source = "default: CUDA with 4-bit QLoRA when torch sees a GPU, else CPU"
    rows.append(("(resolved) TRAINING_DEVICE", f"{settings.training_device_used} ({source})"))
    # What the CPU offers and what TRAINING_PRECISION / LOCAL_PRECISION=auto pick on it.
    for key, value in hardware_summary(settings.data_path).items():
        rows.append((f"(host) {key}", str(value)))
    # The seed's names that mean another setting.
    rows.append(("(seed name) BATCH_SIZE", f"read as MAX_BATCH_SIZE={settings.max_batch_size}"))
    if settings.verbose:
        rows.append(("(resolved) LOG_LEVEL", "DEBUG (VERBOSE=true)"))
    return rows
