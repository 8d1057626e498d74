"""The heavy objects of one running instance, built once and passed to every use case."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine as DBEngine

from loraflow import db
from loraflow.adapters.deploy import TrafficStats
from loraflow.config import Settings
from loraflow.engines.base import LocalEngine
from loraflow.engines.remote import RemoteEngine, make_remote_engine
from loraflow.errors import ConfigError, EngineUnavailable, LoraflowError
from loraflow.memory.index import MemoryIndexes
from loraflow.rag.backends import open_index
from loraflow.rag.collections import KnowledgeBases
from loraflow.rag.embed import Embedder, load_embedder
from loraflow.rag.store import VectorStore
from loraflow.services.context import RequestMonitor
from loraflow.services.infra.adapter_cache import AttachedAdapters
from loraflow.services.infra.usage import TokenUsage

if TYPE_CHECKING:
    from loraflow.training.runner import JobRunner

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything one service process holds: settings, database, store, engines."""

    settings: Settings
    db: DBEngine
    embedder: Embedder
    store: VectorStore
    # The second engine, Ollama or an OpenAI-compatible server (REMOTE_BACKEND).
    remote: RemoteEngine
    # The local engine (LOCAL_ENGINE: HFEngine, LlamaCppEngine or HybridEngine); None when it
    # did not load.
    local: LocalEngine | None = None
    local_error: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Ingest and delete are read-modify-write on the store: one at a time per process.
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = field(default_factory=time.time)
    # Named knowledge bases ("default" is `store` above) and this process's background jobs.
    knowledge: KnowledgeBases | None = None
    jobs: dict[str, threading.Thread] = field(default_factory=dict)
    # The fine-tuning queue; started only by the service (services/training.start_runner).
    training_runner: JobRunner | None = None
    # Per-project vector indexes of the story memory (semantic triggers).
    memory_index: MemoryIndexes | None = None
    # Registered adapters are attached on first use, one attach at a time.
    serve_lock: threading.Lock = field(default_factory=threading.Lock)
    # Those attached on first use, least recently used first (MAX_LOADED_ADAPTERS bounds them).
    attached: AttachedAdapters = field(default_factory=AttachedAdapters)
    # Adapter loads and unloads by name (services/lora_records): the record tokens applied here.
    lora_tokens: dict[str, str] = field(default_factory=dict)
    # Live per-variant counters of deployment targets (canary, A/B), in this process.
    traffic: TrafficStats = field(default_factory=TrafficStats)
    # Writes this worker's request samples and evaluates the alert rules (while serving).
    monitor: RequestMonitor | None = None
    # Requests and tokens per model name, for /metrics.
    usage: TokenUsage = field(default_factory=TokenUsage)
    # Workflows (merge -> validate -> deploy) running in this process.
    workflow_threads: dict[str, threading.Thread] = field(default_factory=dict)


def local_engine(rt: Runtime) -> LocalEngine:
    """The local engine, or EngineUnavailable saying why it is not loaded."""
    if rt.local is None:
        raise EngineUnavailable(
            f"the local model is not loaded: {rt.local_error}",
            hint="fix BASE_MODEL_NAME / CACHE_DIR and restart",
        )
    return rt.local


def knowledge_bases(rt: Runtime) -> KnowledgeBases:
    """The named knowledge bases of this process."""
    if rt.knowledge is None:
        raise EngineUnavailable("knowledge bases are not initialised in this process")
    return rt.knowledge


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir and its standard folders, with a clear error when impossible."""
    for path in (settings.data_path, settings.uploads_dir, settings.cache_path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {path}: {exc.strerror}",
                hint="set LORAFLOW_DATA_DIR to a writable folder",
            ) from exc


def open_store(settings: Settings, embedder: Embedder) -> VectorStore:
    """Open (or create) the VECTOR_STORE backend's store for the configured embedding model."""
    return open_index(settings, settings.vector_store_dir, embedder.name, embedder.dim)


def build_runtime(settings: Settings, *, load_local: bool | None = None) -> Runtime:
    """Build the runtime; the local model loads unless disabled, failures degrade, not crash."""
    prepare_data_dir(settings)
    engine = db.make_engine(settings.db_url, settings.db_busy_timeout)
    embedder = load_embedder(settings.embedding_model, device="cpu", settings=settings)
    store = open_store(settings, embedder)
    remote = make_remote_engine(settings)
    rt = Runtime(settings=settings, db=engine, embedder=embedder, store=store, remote=remote)
    rt.knowledge = KnowledgeBases(settings, engine, embedder, store, rt.ingest_lock)
    rt.memory_index = MemoryIndexes(settings.data_path / "memory_index", settings)
    want_local = settings.load_local_model if load_local is None else load_local
    if want_local:
        load_local_engine_into(rt)
    else:
        rt.local_error = "local model disabled (LOAD_LOCAL_MODEL=false)"
    return rt


def load_local_engine_into(rt: Runtime) -> None:
    """Load the base model and every adapter; record the reason when it cannot load."""
    s = rt.settings
    started = time.perf_counter()
    try:
        engine, warnings = load_local(s)
    except LoraflowError as exc:
        rt.local = None
        rt.local_error = str(exc)
        log.error("local model not loaded: %s", exc)
        return
    rt.local = engine
    rt.local_error = None
    rt.warnings.extend(warnings)
    for w in warnings:
        log.warning("%s", w)
    log.info(
        "local model %s ready on %s with adapters %s (%.1fs)",
        s.base_model_name,
        engine.device,
        engine.adapters() or "none",
        time.perf_counter() - started,
    )


def load_local(
    s: Settings, *, batching: bool = True, adapters: Path | None = None, attach: bool = True
) -> tuple[LocalEngine, list[str]]:
    """The LOCAL_ENGINE engine with every adapter in LORA_MODEL_PATH attached; warnings.

    `adapters` attaches what is under that folder instead (an adapter folder itself works);
    `attach` False attaches none. `batching` False skips the continuous-batching thread
    (one-shot use such as the CLI).
    """
    root = (adapters or s.lora_path) if attach else None
    if s.local_engine == "llamacpp":
        return _load_llamacpp(s, root)
    if s.local_engine == "hybrid":
        return _load_hybrid(s, root, batching)
    return _load_transformers(s, root, batching)


def _load_llamacpp(s: Settings, root: Path | None) -> tuple[LocalEngine, list[str]]:
    """The llama.cpp engine; PEFT adapters become GGUFs on first use (the converter lives
    above engines)."""
    from loraflow.adapters.gguf import export_gguf_adapter
    from loraflow.adapters.inspect import checksum
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    return load_llamacpp_engine(
        s.base_model_name,
        s.cache_path,
        root,
        threads=s.llamacpp_threads,
        export_lora=export_gguf_adapter,
        checksum=checksum,
    )


def _load_transformers(
    s: Settings, root: Path | None, batching: bool
) -> tuple[LocalEngine, list[str]]:
    """The transformers engine as the settings say (continuous batching unless `batching`
    is False)."""
    from loraflow.engines.hf import load_local_engine

    return load_local_engine(
        s.base_model_name,
        s.cache_path,
        s.device,
        s.quantization_type if s.enable_quantization else None,
        root,
        max_batch=s.max_batch_size if s.continuous_batching and batching else 0,
        lean=s.local_decoder == "lean",
        half=s.enable_fp16,
        memory_fraction=s.cuda_memory_fraction,
        precision=s.local_precision,
        int8_prompts=s.local_int8_prompts,
        profile_dir=s.data_path,
    )


def _load_hybrid(s: Settings, root: Path | None, batching: bool) -> tuple[LocalEngine, list[str]]:
    """LOCAL_ENGINE=hybrid: the transformers engine, and llama.cpp beside it for lone requests
    where the base model has a GGUF (the transformers engine alone where it has none)."""
    from loraflow.engines.hybrid import HybridEngine

    batch, warnings = _load_transformers(s, root, batching)

    explicit = "local_engine" in s.model_fields_set

    def note(message: str) -> None:
        # Asked for by name, what hybrid cannot do is a warning; as the default it is how
        # the engine runs where llama.cpp can't be beside it (a GPU, a model without a GGUF).
        if explicit:
            warnings.append(message)
        else:
            log.info("%s", message)

    if batch.device != "cpu":
        note(
            f"LOCAL_ENGINE=hybrid serves with transformers alone on {batch.device}: its "
            "llama.cpp would answer lone requests on the CPU"
        )
        return batch, warnings
    try:
        solo, solo_warnings = _load_llamacpp(s, root)
    except Exception as exc:  # noqa: BLE001 - llama.cpp is optional here: serve without it
        if not isinstance(exc, LoraflowError):
            log.exception("llama.cpp could not start beside the transformers engine")
        note(f"LOCAL_ENGINE=hybrid serves with transformers alone: {exc}")
        return batch, warnings
    except BaseException:
        batch.close()  # nothing half-started stays behind
        raise
    for w in solo_warnings:
        note(f"llama.cpp (lone requests): {w}; the batch serves it")
    return HybridEngine(batch, solo, s.hybrid_prompt_tokens), warnings
