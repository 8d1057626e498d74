"""The remote engine chosen by REMOTE_BACKEND: Ollama, or vLLM / any OpenAI-compatible server."""

from __future__ import annotations

from loraflow.config import Settings
from loraflow.engines.fleet import OpenAIFleet
from loraflow.engines.ollama import OllamaEngine

RemoteEngine = OllamaEngine | OpenAIFleet

# Every name an API accepts for "the remote engine"; the seed called it "ollama".
REMOTE_NAMES = ("remote", "ollama", "openai")
# API model names `remote/<name>` answer with the remote server's model <name>: any model Ollama
# lists (an adapter deployed there is one), or vLLM's base model and LoRA modules.
MODEL_PREFIX = "remote/"


def make_remote_engine(settings: Settings, timeout: float | None = None) -> RemoteEngine:
    """The engine REMOTE_BACKEND names, configured from its own settings."""
    if settings.remote_backend == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        # One server or several replicas of one model (OPENAI_BASE_URLS): one engine.
        return OpenAIFleet(
            settings.openai_urls,
            settings.openai_model,
            api_key=key or None,
            timeout=timeout or settings.openai_timeout,
            eject_seconds=settings.fleet_eject_seconds,
        )
    return OllamaEngine(
        settings.ollama_base_url, settings.ollama_model, timeout or settings.ollama_timeout
    )


def is_remote(engine: str | None) -> bool:
    """True for any name of the remote engine (remote, ollama, openai)."""
    return engine in REMOTE_NAMES


def describe(settings: Settings) -> dict[str, str]:
    """Backend, URL and model of the remote engine, for info and status output."""
    if settings.remote_backend == "openai":
        return {
            "remote_backend": "openai",
            "remote_base_url": ", ".join(settings.openai_urls),
            "remote_model": settings.openai_model,
        }
    return {
        "remote_backend": "ollama",
        "remote_base_url": settings.ollama_base_url,
        "remote_model": settings.ollama_model,
    }


def label(settings: Settings) -> str:
    """How messages name the remote model, e.g. "Ollama model qwen2.5:1.5b at http://..."."""
    d = describe(settings)
    kind = "Ollama" if d["remote_backend"] == "ollama" else "OpenAI-compatible"
    return f"{kind} model {d['remote_model']} at {d['remote_base_url']}"
