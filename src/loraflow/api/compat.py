"""Routers that answer errors in another API's own shape (OpenAI's, Ollama's)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from loraflow.errors import LoraflowError

log = logging.getLogger(__name__)

# (status, message, exception) -> the response in the API's own error shape.
ErrorRenderer = Callable[[int, str, BaseException], Response]


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A one-line message for a body that failed validation, and the field it names."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


def route_class(render: ErrorRenderer, validation_status: int = 400) -> type[APIRoute]:
    """An APIRoute whose loraflow and validation errors are rendered by `render`."""

    class CompatRoute(APIRoute):
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
                except Exception as exc:  # never a traceback to the client
                    log.exception("unexpected error")
                    return render(500, f"internal error: {type(exc).__name__}; see the log", exc)

            return wrapped

    return CompatRoute
