"""The Ollama engine: chat through a running Ollama server's HTTP API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from loraflow.engines.base import EngineHealth, GenerationParams, GenerationResult
from loraflow.engines.chat import check_messages
from loraflow.engines.transport import transport_reason
from loraflow.errors import EngineUnavailable, NotFound

HEALTH_TIMEOUT = 2.0
# Failing fast on an absent server matters more than patience with a slow connect.
CONNECT_TIMEOUT = 5.0


class OllamaEngine:
    """Generate with a model served by Ollama; adapters are not supported."""

    name = "ollama"

    def __init__(self, base_url: str, model: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OllamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def adapters(self) -> list[str]:
        """Ollama serves whole models, so there are no adapters to pick."""
        return []

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer `messages` in one piece."""
        body = self._body(messages, params, adapter, stream=False)
        try:
            response = self._client.post("/api/chat", json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response)
        data = _json(response.text)
        return GenerationResult(
            text=(data.get("message") or {}).get("content", ""),
            prompt_tokens=int(data.get("prompt_eval_count") or 0),
            completion_tokens=int(data.get("eval_count") or 0),
            finish_reason="length" if data.get("done_reason") == "length" else "stop",
        )

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Answer `messages` as text pieces; bad input raises here, before the first piece."""
        body = self._body(messages, params, adapter, stream=True)
        return self._stream(body)

    def health(self) -> EngineHealth:
        """Whether Ollama answers and has the configured model pulled."""
        try:
            response = self._client.get("/api/tags", timeout=HEALTH_TIMEOUT)
        except httpx.TransportError:
            return EngineHealth(False, f"Ollama unreachable at {self.base_url}")
        if response.status_code != 200:
            return EngineHealth(False, f"Ollama at {self.base_url} answered {_excerpt(response)}")
        try:
            names = {m.get("name", "") for m in _json(response.text).get("models", [])}
        except EngineUnavailable as exc:
            return EngineHealth(False, exc.message)
        if self.model in names or f"{self.model}:latest" in names:
            return EngineHealth(True, f"Ollama at {self.base_url} serves {self.model}")
        missing = f"Ollama at {self.base_url} has no model {self.model!r}"
        return EngineHealth(False, f"{missing}; run `ollama pull {self.model}`")

    def _stream(self, body: dict) -> Iterator[str]:
        started = False
        try:
            with self._client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    data = _json(line)
                    if "error" in data:
                        raise EngineUnavailable(f"Ollama failed mid-answer: {data['error']}")
                    piece = (data.get("message") or {}).get("content", "")
                    if piece:
                        started = True
                        yield piece
                    if data.get("done"):
                        return
        except httpx.TransportError as exc:
            if not started:
                raise self._unreachable(exc) from exc
            reason = transport_reason(exc, self.timeout, "OLLAMA_TIMEOUT")
            raise EngineUnavailable(
                f"Ollama at {self.base_url} failed mid-answer: {reason}"
            ) from exc
        # A body that ends without the final `done` record was cut, not finished.
        raise EngineUnavailable(
            f"Ollama at {self.base_url} failed mid-answer: "
            "the stream ended without its final record"
        )

    def _body(
        self,
        messages: list[dict[str, str]],
        params: GenerationParams,
        adapter: str | None,
        stream: bool,
    ) -> dict:
        params.validate()
        check_messages(messages)
        if adapter is not None:
            raise NotFound(
                f"adapter {adapter!r} is not loaded; the Ollama engine has no adapters",
                hint="use the local engine for adapters, or send no adapter",
            )
        options: dict[str, Any] = {
            "num_predict": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "repeat_penalty": params.repetition_penalty,
        }
        if params.stop:
            options["stop"] = list(params.stop)
        if params.seed is not None:
            options["seed"] = params.seed
        return {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": stream,
            "options": options,
        }

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        if response.status_code == 404:
            raise EngineUnavailable(
                f"Ollama at {self.base_url} has no model {self.model!r} ({_excerpt(response)})",
                hint=f"run `ollama pull {self.model}` or set OLLAMA_MODEL",
            )
        raise EngineUnavailable(f"Ollama at {self.base_url} answered {_excerpt(response)}")

    def _unreachable(self, exc: httpx.TransportError) -> EngineUnavailable:
        reason = transport_reason(exc, self.timeout, "OLLAMA_TIMEOUT")
        if reason == "unreachable":
            return EngineUnavailable(
                f"Ollama unreachable at {self.base_url}",
                hint="start it with `ollama serve` or set OLLAMA_BASE_URL",
            )
        return EngineUnavailable(
            f"Ollama at {self.base_url} {reason}",
            hint="check that OLLAMA_BASE_URL points at a running Ollama",
        )


def _json(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineUnavailable(f"Ollama sent a reply that is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise EngineUnavailable(f"Ollama sent unexpected JSON: {text[:200]!r}")
    return data


def _excerpt(response: httpx.Response) -> str:
    body = response.text.strip().replace("\n", " ")
    return f"HTTP {response.status_code}: {body[:200]}"
