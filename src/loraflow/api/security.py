"""Request guards as plain ASGI middleware: API keys, body-size limits, CORS."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.middleware.cors import CORSMiddleware

from loraflow.api.compat import renderer_for
from loraflow.config import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Liveness probes (containers, load balancers) must work without a key.
OPEN_PATHS = frozenset({"/health"})
# Multipart framing around the file bytes: boundaries and part headers.
_MULTIPART_OVERHEAD = 64 * 1024


async def _reject(
    scope: Scope, send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]
) -> None:
    # The OpenAI and Ollama routes are refused in their own error shape, the rest as FastAPI does.
    render = renderer_for(scope.get("path", ""))
    body = render(status, detail, None).body if render else json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route but /health needs `Authorization: Bearer KEY` or `X-API-Key: KEY`."""

    def __init__(self, app: ASGIApp, keys: list[str], own_login: tuple[str, ...] = ()) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        # Mounted apps with a login of their own (the web UI asks for a key as password):
        # browsers cannot send the key header, so these prefixes are checked there instead.
        self.own_login = own_login

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        # Constant-time comparison against each configured key.
        return bool(given) and any(hmac.compare_digest(given, k) for k in self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] != "http" or path in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if any(path == p or path.startswith(p + "/") for p in self.own_login):
            await self.app(scope, receive, send)
            return
        if not self._allowed(scope):
            await _reject(
                scope,
                send,
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit before they are buffered: by header, then by count."""

    def __init__(self, app: ASGIApp, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    def _limit(self, scope: Scope) -> tuple[int, str]:
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"multipart/"):
            return self.upload_limit + _MULTIPART_OVERHEAD, "MAX_UPLOAD_MB"
        return self.json_limit, "MAX_BODY_MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        message = f"request body is over the limit of {limit // 1024} KB ({setting})"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _reject(scope, send, 413, message, [(b"connection", b"close")])
            return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    too_large = True
                    # Ending the body here makes the parser fail; the response below wins.
                    return {"type": "http.disconnect"}
            return msg

        started = False

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if too_large and not started:
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await _reject(scope, send, 413, message, [(b"connection", b"close")])


class RequestGuards:
    """Builds the guard chain from the running instance's settings on first use.

    Settings are read in the app's lifespan, not at import, so the chain is assembled
    lazily: CORS (outermost, so preflights get headers), API keys, then body limits.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._chain: ASGIApp | None = None
        self._settings: Settings | None = None

    def _build(self, settings: Settings) -> ASGIApp:
        chain: ASGIApp = BodyLimitMiddleware(
            self.app, settings.max_body_bytes, settings.max_upload_bytes
        )
        if settings.api_key_list:
            ui = ("/ui",) if settings.enable_ui else ()
            chain = ApiKeyMiddleware(chain, settings.api_key_list, own_login=ui)
        if settings.cors_origin_list:
            chain = CORSMiddleware(
                chain,
                allow_origins=settings.cors_origin_list,
                allow_methods=["*"],
                allow_headers=["*"],
            )
        return chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        if rt is None:
            # Until the lifespan has built the runtime, only the liveness probe answers.
            if scope["path"] in OPEN_PATHS:
                await self.app(scope, receive, send)
            else:
                await _reject(scope, send, 503, "the service is still starting; retry shortly", [])
            return
        if self._chain is None or self._settings is not rt.settings:
            self._settings, self._chain = rt.settings, self._build(rt.settings)
        await self._chain(scope, receive, send)
