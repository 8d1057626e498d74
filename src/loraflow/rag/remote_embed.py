"""Embedders served over HTTP: Ollama's /api/embed and OpenAI-compatible /v1/embeddings.

`EMBEDDING_MODEL=ollama:<name>` embeds with a model the Ollama server holds (e.g. bge-m3);
`openai:<name>` with any server that speaks /v1/embeddings (vLLM, TEI, loraflow). The prefix
stays part of the embedder's name, so an index records where its vectors came from and a
local model of the same name never passes for it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import numpy as np

from loraflow.config import Settings
from loraflow.errors import EngineUnavailable, InvalidInput, ModelLoadError
from loraflow.rag.embed import normalise_rows

PREFIXES = ("ollama:", "openai:")
CONNECT_TIMEOUT = 5.0
# Texts per request: large enough to keep round trips few, small enough for any server's limit.
BATCH = 64


def is_remote_spec(spec: str) -> bool:
    """Whether an EMBEDDING_MODEL value names a model on a remote server."""
    return spec.strip().lower().startswith(PREFIXES)


class RemoteEmbedder:
    """Embeds by HTTP; the dimension is probed once, when the embedder is made."""

    def __init__(self, name: str, base_url: str, model: str, timeout: float, headers: dict) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        )
        self._lock = threading.Lock()
        try:
            self.dim = int(self._post(["dimension probe"]).shape[1])
        except (EngineUnavailable, InvalidInput) as exc:
            self._client.close()
            raise ModelLoadError(
                f"Could not load embedding model {name!r}: {exc.message}",
                hint=exc.hint or "check that the server runs and holds the model",
            ) from exc

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dim) for passages to be stored."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._post(list(texts[i : i + BATCH])) for i in range(0, len(texts), BATCH)]
        out = np.concatenate(parts)
        if out.shape != (len(texts), self.dim):
            raise EngineUnavailable(
                f"{self.base_url} sent {out.shape[0]}x{out.shape[1]} vectors for "
                f"{len(texts)} texts of {self.dim}-d model {self.model!r}"
            )
        return normalise_rows(out, self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        """Vector of shape (dim,) for a search query."""
        return self.embed_documents([text])[0]

    def _post(self, texts: list[str]) -> np.ndarray:
        path, body = self._request(texts)
        try:
            response = self._client.post(path, json=body)
        except httpx.TransportError as exc:
            raise EngineUnavailable(
                f"embedding server unreachable at {self.base_url} ({type(exc).__name__})",
                hint=f"start it, or change EMBEDDING_MODEL from {self.name!r}",
            ) from exc
        if response.status_code >= 400:
            detail = response.text.strip().replace("\n", " ")[:300]
            what = f"{self.base_url} answered HTTP {response.status_code} for model {self.model!r}"
            if response.status_code in (400, 404, 422):
                raise InvalidInput(f"{what}: {detail}", hint=self._missing_hint())
            raise EngineUnavailable(f"{what}: {detail}")
        try:
            data = json.loads(response.text)
            vectors = self._vectors(data)
            arr = np.asarray(vectors, dtype=np.float32)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineUnavailable(
                f"{self.base_url} sent no embeddings: {response.text[:200]!r}"
            ) from exc
        if arr.ndim != 2 or arr.shape[0] != len(texts) or arr.shape[1] == 0:
            raise EngineUnavailable(
                f"{self.base_url} sent {arr.shape} embeddings for {len(texts)} texts"
            )
        return arr

    def _request(self, texts: list[str]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _vectors(self, data: Any) -> list:
        raise NotImplementedError

    def _missing_hint(self) -> str:
        raise NotImplementedError


class OllamaEmbedder(RemoteEmbedder):
    """A model the Ollama server holds, through /api/embed (the `ollama` client's shape)."""

    def _request(self, texts: list[str]) -> tuple[str, dict[str, Any]]:
        return "/api/embed", {"model": self.model, "input": texts}

    def _vectors(self, data: Any) -> list:
        return data["embeddings"]

    def _missing_hint(self) -> str:
        return f"run `ollama pull {self.model}` on that server"


class OpenAIEmbedder(RemoteEmbedder):
    """A model behind an OpenAI-compatible /v1/embeddings (vLLM, TEI, loraflow)."""

    def _request(self, texts: list[str]) -> tuple[str, dict[str, Any]]:
        return "/embeddings", {"model": self.model, "input": texts, "encoding_format": "float"}

    def _vectors(self, data: Any) -> list:
        rows = sorted(data["data"], key=lambda d: d.get("index", 0))
        return [r["embedding"] for r in rows]

    def _missing_hint(self) -> str:
        return f"serve {self.model!r} there (e.g. `vllm serve {self.model} --task embed`)"


def load_remote_embedder(spec: str, settings: Settings) -> RemoteEmbedder:
    """The embedder an `ollama:<name>` or `openai:<name>` spec names, at that backend's URL."""
    kind, _, model = spec.strip().partition(":")
    kind, model = kind.lower(), model.strip()
    if not model:
        raise ModelLoadError(
            f"Embedding model {spec!r} names no model; e.g. ollama:bge-m3 or openai:BAAI/bge-m3"
        )
    name = f"{kind}:{model}"
    if kind == "ollama":
        base = settings.embedding_base_url or settings.ollama_base_url
        return OllamaEmbedder(name, base, model, settings.ollama_timeout, {})
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = settings.embedding_base_url or settings.openai_base_url
    return OpenAIEmbedder(name, base, model, settings.openai_timeout, headers)
