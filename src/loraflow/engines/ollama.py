"""The Ollama engine: chat through a running Ollama server's HTTP API.

Ollama serves an adapter as a model of its own (a Modelfile with FROM + ADAPTER, `ollama
create`), so the engine's "adapters" are the other models the server lists: picking one sends
its name as the request's `model`, as vLLM does with its LoRA modules.
"""

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
# Model listings are polled by clients: a server that hangs must not hold them for long.
LIST_TIMEOUT = 5.0
# Failing fast on an absent server matters more than patience with a slow connect.
CONNECT_TIMEOUT = 5.0


class OllamaEngine:
    """Generate with OLLAMA_MODEL, or with any other model the Ollama server lists."""

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

    def models(self, timeout: float | None = None) -> list[str]:
        """Every model name the server lists (/api/tags), as it spells them."""
        try:
            response = self._client.get("/api/tags", timeout=timeout or self.timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response)
        return [str(m["name"]) for m in _json(response.text).get("models") or [] if m.get("name")]

    def adapters(self) -> list[str]:
        """The models the server lists besides OLLAMA_MODEL (deployed adapters among them)."""
        return [
            n for n in self.models(min(self.timeout, LIST_TIMEOUT)) if not same_model(n, self.model)
        ]

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer `messages` in one piece."""
        body = self._body(messages, params, adapter, stream=False)
        try:
            response = self._client.post("/api/chat", json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, adapter)
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
        return self._stream(body, adapter)

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
        if any(same_model(n, self.model) for n in names):
            return EngineHealth(True, f"Ollama at {self.base_url} serves {self.model}")
        missing = f"Ollama at {self.base_url} has no model {self.model!r}"
        return EngineHealth(False, f"{missing}; run `ollama pull {self.model}`")

    def _stream(self, body: dict, adapter: str | None = None) -> Iterator[str]:
        started = False
        try:
            with self._client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response, adapter)
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
            "model": adapter or self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": stream,
            "options": options,
        }

    def _check(self, response: httpx.Response, adapter: str | None = None) -> None:
        if response.status_code < 400:
            return
        if response.status_code == 404 and adapter is not None:
            # Another model than OLLAMA_MODEL: the request named it, so it is the request's miss.
            raise NotFound(
                f"Ollama at {self.base_url} has no model {adapter!r} ({_excerpt(response)})",
                hint=f"run `ollama pull {adapter}`, or `ollama create {adapter} -f Modelfile` "
                "for an adapter",
            )
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


def same_model(listed: str, name: str) -> bool:
    """Whether two Ollama model names mean the same model (a bare name is tag `latest`)."""

    def full(n: str) -> str:
        return n if ":" in n.rsplit("/", 1)[-1] else f"{n}:latest"

    return full(listed) == full(name)


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
