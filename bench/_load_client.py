"""The simulated users of bench/load.py: one HTTP client each, cycling through operations."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

OPS = ("ask", "chat", "chat_stream", "embeddings", "memory_write")
QUESTIONS = [
    "What is loraflow?",
    "How do I train a LoRA adapter?",
    "Which vector store does the service use?",
    "How are answers cited?",
]
SENTENCES = [
    "The harbour was quiet before the storm.",
    "A LoRA adapter changes a few low-rank matrices.",
    "Vector search finds the nearest chunks.",
]
KEEP_ENTRIES = 20  # each client deletes its oldest memory entry past this, so state stays flat


class OpFailed(Exception):
    """An answer that is not what a client expects (bad status or malformed body)."""


@dataclass
class Sample:
    op: str
    t: float  # seconds since the load phase started
    latency: float
    error: str | None = None


@dataclass
class Target:
    """What the clients need to know about the server."""

    url: str
    chat_models: list[str]
    embedding_model: str
    max_tokens: int
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def _check(r: httpx.Response, expected: int = 200) -> dict[str, Any]:
    if r.status_code != expected:
        raise OpFailed(f"HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


class Client:
    """One simulated user: its own HTTP connection and its own story-memory project."""

    def __init__(self, target: Target, index: int) -> None:
        self.target = target
        self.index = index
        self.http = httpx.Client(base_url=target.url, timeout=300)
        self.turn = itertools.count(index)
        self.entries: list[str] = []
        name = f"load-{target.run_id}-{index}"
        self.project = _check(self.http.post("/api/memory/projects", json={"name": name}), 201)[
            "id"
        ]

    def _model(self) -> str:
        models = self.target.chat_models
        return models[next(self.turn) % len(models)]

    def ask(self) -> None:
        q = QUESTIONS[next(self.turn) % len(QUESTIONS)]
        body = {"query": q, "use_lora": True, "max_new_tokens": self.target.max_tokens}
        out = _check(self.http.post("/ask", json=body))
        if "answer" not in out or "source_documents" not in out:
            raise OpFailed(f"/ask answer without answer/source_documents: {str(out)[:200]}")

    def _chat_body(self, stream: bool) -> dict[str, Any]:
        q = QUESTIONS[next(self.turn) % len(QUESTIONS)]
        return {
            "model": self._model(),
            "messages": [{"role": "user", "content": q}],
            "max_tokens": self.target.max_tokens,
            "stream": stream,
        }

    def chat(self) -> None:
        out = _check(self.http.post("/v1/chat/completions", json=self._chat_body(False)))
        if not out.get("choices"):
            raise OpFailed(f"chat completion without choices: {str(out)[:200]}")

    def chat_stream(self) -> None:
        body = self._chat_body(True)
        done = False
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                raise OpFailed(f"HTTP {r.status_code}: {r.text[:200]}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    done = True
                    break
                if "error" in json.loads(data):
                    raise OpFailed(f"error event in the stream: {data[:200]}")
        if not done:
            raise OpFailed("stream ended without data: [DONE]")

    def embeddings(self) -> None:
        body = {"model": self.target.embedding_model, "input": SENTENCES}
        out = _check(self.http.post("/v1/embeddings", json=body))
        if len(out.get("data", [])) != len(SENTENCES):
            raise OpFailed(f"expected {len(SENTENCES)} embeddings: {str(out)[:200]}")

    def memory_write(self) -> None:
        n = next(self.turn)
        entry = {
            "kind": "character",
            "title": f"Person {self.index}-{n}",
            "content": f"Person {self.index}-{n} keeps the lighthouse on the north cape.",
            "keywords": [f"Person {self.index}-{n}"],
        }
        url = f"/api/memory/projects/{self.project}/entries"
        self.entries.append(_check(self.http.post(url, json=entry), 201)["entry_id"])
        if len(self.entries) > KEEP_ENTRIES:
            _check(self.http.delete(f"{url}/{self.entries.pop(0)}"))

    def run_op(self, op: str, t0: float) -> Sample:
        fn: Callable[[], None] = getattr(self, op)
        started = time.perf_counter()
        error = None
        try:
            fn()
        except (OpFailed, httpx.HTTPError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        return Sample(op, started - t0, time.perf_counter() - started, error)

    def close(self) -> None:
        try:
            self.http.delete(f"/api/memory/projects/{self.project}")
        finally:
            self.http.close()


def discover(url: str, max_tokens: int) -> Target:
    """The base model, up to two adapters (mixed into chat) and the embedding model."""
    models = _check(httpx.get(f"{url}/v1/models", timeout=60))["data"]
    base = [m["id"] for m in models if m.get("kind") == "base"]
    adapters = [m["id"] for m in models if m.get("kind") == "adapter"][:2]
    embedding = [m["id"] for m in models if m.get("kind") == "embedding"]
    if not base or not embedding:
        raise SystemExit(f"{url}/v1/models lists no base or no embedding model: {models}")
    return Target(url, base + adapters, embedding[0], max_tokens)
