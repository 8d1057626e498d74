"""The OpenAI-HTTP engine: chat through any OpenAI-compatible server (vLLM, loraflow, ...).

vLLM serves LoRA adapters as extra model names (`--lora-modules name=path`), so an adapter here
is just another `model` value sent to the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from loraflow.engines.base import EngineHealth, GenerationParams, GenerationResult
from loraflow.engines.chat import check_messages
from loraflow.engines.transport import transport_reason
from loraflow.errors import EngineUnavailable, InvalidInput, NotFound

HEALTH_TIMEOUT = 2.0
LIST_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# Statuses a proxy or a starting / overloaded server gives before any of the answer.
DOWN_STATUSES = (502, 503, 504)


class ReplicaDown(EngineUnavailable):
    """The server failed before sending any of its answer (refused, reset, 502/503/504):
    the same request may be sent to another server of the same model."""


class OpenAIHTTPEngine:
    """Generate with a model (and its adapters) served behind an OpenAI-compatible API."""

    name = "openai"

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAIHTTPEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        try:
            response = self._client.get("/models", timeout=timeout or self.timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, None)
        return list(_json(response.text).get("data") or [])

    def model_ids(self, timeout: float | None = None) -> list[str]:
        """Every model id the server lists now (the base model and its loaded adapters)."""
        return [str(m["id"]) for m in self._models(timeout) if m.get("id")]

    def load_adapter(self, name: str, path: str) -> None:
        """vLLM's run-time LoRA API: serve the adapter folder `path` (as the server sees it)
        as model `name`; the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."""
        self._post_admin("/load_lora_adapter", {"lora_name": name, "lora_path": path}, name)

    def unload_adapter(self, name: str) -> None:
        """vLLM's run-time LoRA API: stop serving adapter `name`."""
        self._post_admin("/unload_lora_adapter", {"lora_name": name}, name)

    def _post_admin(self, path: str, body: dict[str, str], adapter: str) -> None:
        try:
            response = self._client.post(path, json=body, timeout=self.timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, adapter)

    def adapters(self) -> list[str]:
        """Model names the server lists besides the base model (vLLM's LoRA modules)."""
        # vLLM names a LoRA module's base in `parent`; other models there (loraflow's embedder,
        # a second base) are not adapters of this one. Servers without `parent` list them all.
        return [
            m["id"]
            # Model listings are polled by clients: a server that hangs must not hold them
            # for the whole generation timeout.
            for m in self._models(min(self.timeout, LIST_TIMEOUT))
            if m.get("id") and m["id"] != self.model and m.get("parent", self.model) == self.model
        ]

    def health(self) -> EngineHealth:
        """Whether the server answers and serves the configured model."""
        try:
            ids = [m.get("id") for m in self._models(HEALTH_TIMEOUT)]
        except EngineUnavailable as exc:
            return EngineHealth(False, exc.message)
        if self.model in ids:
            return EngineHealth(True, f"{self.base_url} serves {self.model}")
        return EngineHealth(False, f"{self.base_url} has no model {self.model!r}; it has {ids}")

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer `messages` in one piece."""
        body = self._body(messages, params, adapter, stream=False)
        try:
            response = self._client.post("/chat/completions", json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, adapter)
        data = _json(response.text)
        choice = (data.get("choices") or [{}])[0]
        usage = data.get("usage") or {}
        return GenerationResult(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Answer `messages` as text pieces; bad input raises here, before the first piece."""
        return self._stream(self._body(messages, params, adapter, stream=True), adapter)

    def _stream(self, body: dict, adapter: str | None) -> Iterator[str]:
        started = False
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response, adapter)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    data = _json(payload)
                    if "error" in data:
                        raise EngineUnavailable(
                            f"{self.base_url} failed mid-answer: {data['error']}"
                        )
                    for choice in data.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            started = True
                            yield piece
        except httpx.TransportError as exc:
            if not started:
                raise self._unreachable(exc) from exc
            reason = transport_reason(exc, self.timeout, "OPENAI_TIMEOUT")
            raise EngineUnavailable(f"{self.base_url} failed mid-answer: {reason}") from exc
        # A body that ends without `data: [DONE]` was cut, not finished.
        raise EngineUnavailable(
            f"{self.base_url} failed mid-answer: the stream ended without data: [DONE]"
        )

    def _body(
        self,
        messages: list[dict[str, str]],
        params: GenerationParams,
        adapter: str | None,
        stream: bool,
    ) -> dict[str, Any]:
        params.validate()
        check_messages(messages)
        body: dict[str, Any] = {
            "model": adapter or self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        # Non-OpenAI sampling fields that vLLM (and loraflow) accept in the body.
        if params.top_k:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.ignore_eos:
            body["ignore_eos"] = True
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _check(self, response: httpx.Response, adapter: str | None) -> None:
        if response.status_code < 400:
            return
        message = _error_message(response)
        if response.status_code == 404:
            what = f"adapter {adapter!r}" if adapter else f"model {self.model!r}"
            raise NotFound(f"{self.base_url} has no {what}: {message}")
        if response.status_code in (400, 422):
            raise InvalidInput(f"{self.base_url} refused the request: {message}")
        error = ReplicaDown if response.status_code in DOWN_STATUSES else EngineUnavailable
        raise error(f"{self.base_url} answered HTTP {response.status_code}: {message}")

    def _unreachable(self, exc: httpx.TransportError) -> EngineUnavailable:
        reason = transport_reason(exc, self.timeout, "OPENAI_TIMEOUT")
        if reason == "unreachable":
            return ReplicaDown(
                f"OpenAI-compatible server unreachable at {self.base_url}",
                hint="start it (e.g. `vllm serve MODEL --enable-lora`) or fix its base URL",
            )
        if isinstance(exc, httpx.TimeoutException):
            # Slow, not gone: sending the same work elsewhere would double the load.
            return EngineUnavailable(f"OpenAI-compatible server at {self.base_url} {reason}")
        return ReplicaDown(f"OpenAI-compatible server at {self.base_url} {reason}")


def _json(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineUnavailable(
            f"the server sent a reply that is not JSON: {text[:200]!r}"
        ) from exc
    if not isinstance(data, dict):
        raise EngineUnavailable(f"the server sent unexpected JSON: {text[:200]!r}")
    return data


def _error_message(response: httpx.Response) -> str:
    try:
        error = json.loads(response.text).get("error")
    except (json.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    return response.text.strip().replace("\n", " ")[:300]
