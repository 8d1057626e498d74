"""Embeddings for the OpenAI and Ollama APIs, from the runtime's embedding model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from loraflow.errors import InvalidInput, NotFound
from loraflow.services.catalog.names import model_names
from loraflow.services.runtime import Runtime

MAX_INPUTS = 2048


@dataclass
class Embeddings:
    """One unit-length vector per input text, and how many tokens the inputs held."""

    model: str
    vectors: np.ndarray
    tokens: int


def embedding_model_names(rt: Runtime) -> list[str]:
    """Names /v1/embeddings accepts: the embedder's own, then every chat model name."""
    return [rt.embedder.name, *model_names(rt)]


def embed(rt: Runtime, model: str, texts: Any) -> Embeddings:
    """Embed a string or a list of strings; token-id input is refused with the reason."""
    name = (model or "").strip().removesuffix(":latest")
    known = embedding_model_names(rt)
    if name not in known:
        listed = ", ".join(repr(n) for n in known)
        raise NotFound(f"model {model!r} does not exist; known models: {listed}")
    items = [texts] if isinstance(texts, str) else texts
    if not isinstance(items, list) or not items:
        raise InvalidInput("input must be a non-empty string or list of strings")
    if len(items) > MAX_INPUTS:
        raise InvalidInput(f"input has {len(items)} items; the limit is {MAX_INPUTS}")
    limit = rt.settings.max_query_chars * 4
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInput(
                f"input[{i}] is {type(text).__name__}, not text: loraflow embeds strings, not "
                "token ids (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))"
            )
        if not text.strip():
            raise InvalidInput(f"input[{i}] is empty")
        if len(text) > limit:
            raise InvalidInput(f"input[{i}] has {len(text)} characters; the limit is {limit}")
    vectors = rt.embedder.embed_documents(items)
    # Word counts stand in for tokens: the embedder's tokenizer is not exposed.
    tokens = sum(len(t.split()) for t in items)
    return Embeddings(name, vectors, tokens)
