"""Routers that answer errors in another API's own shape (OpenAI's, Ollama's)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loraflow.api.json_body import BoundedJsonRoute
from loraflow.errors import LoraflowError, NotFound, from_os_error

log = logging.getLogger(__name__)

# (status, message, exception) -> the response in the API's own error shape.
ErrorRenderer = Callable[[int, str, BaseException | None], Response]

# Ollama's routes sit under /api beside loraflow's own; these paths are Ollama's
# (tests/unit/test_api_errors.py checks the set against the router).
OLLAMA_PATHS = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/tags",
        "/api/show",
        "/api/embed",
        "/api/embeddings",
        "/api/version",
    }
)
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
}


def openai_error(status: int, message: str, exc: BaseException | None = None) -> Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    param = validation_message(exc)[1] if isinstance(exc, RequestValidationError) else None
    code = "model_not_found" if isinstance(exc, NotFound) and "model" in message else None
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def ollama_error(status: int, message: str, exc: BaseException | None = None) -> Response:
    """Ollama's error shape: {"error": message}."""
    return JSONResponse({"error": message}, status_code=status)


def renderer_for(path: str) -> ErrorRenderer | None:
    """The error shape of the API family that owns `path`; None for loraflow's own routes."""
    if path == "/v1" or path.startswith("/v1/"):
        return openai_error
    if path in OLLAMA_PATHS:
        return ollama_error
    return None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A one-line message for a body that failed validation, and the field it names."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


def route_class(render: ErrorRenderer, validation_status: int = 400) -> type[BoundedJsonRoute]:
    """An APIRoute whose loraflow and validation errors are rendered by `render`."""

    class CompatRoute(BoundedJsonRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def wrapped(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    message, _ = validation_message(exc)
                    return render(validation_status, message, exc)
                except LoraflowError as exc:
                    # The APIs' clients expect 400 for bad input, not FastAPI's 422.
                    status = 400 if exc.http_status == 422 else exc.http_status
                    message = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
                    return render(status, message, exc)
                except HTTPException as exc:
                    # The framework's own refusals (a body it cannot parse: 400) keep their
                    # status; only a real fault below is a 500.
                    return render(exc.status_code, str(exc.detail), exc)
                except Exception as exc:  # never a traceback to the client
                    if (user_error := from_os_error(exc)) is not None:
                        return render(400, user_error.message, user_error)
                    log.exception("unexpected error")
                    return render(500, f"internal error: {type(exc).__name__}; see the log", exc)

            return wrapped

    return CompatRoute
