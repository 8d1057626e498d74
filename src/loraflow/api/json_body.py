"""Every JSON request body is read within the configured limits before FastAPI parses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.message import Message
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute, APIRouter

from loraflow.safe_json import DEFAULT_LIMITS, JsonLimits
from loraflow.safe_json import loads as bounded_loads


def is_json_body(content_type: str | None) -> bool:
    """Whether FastAPI reads a body with this content type as JSON (none counts, as there)."""
    if not content_type:
        return True
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def check_json_body(request: Request) -> None:
    """Raise InvalidInput/TooLarge for a JSON body past the limits; syntax is FastAPI's to judge.

    The body and its parsed value are cached on the request, so the route reads them as is.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if not is_json_body(request.headers.get("content-type")):
        return
    body = await request.body()
    if not body:
        return
    rt = getattr(request.app.state, "runtime", None)
    limits: JsonLimits = rt.settings.json_limits() if rt is not None else DEFAULT_LIMITS
    try:
        value = bounded_loads(body, limits, where="request body")
    except (json.JSONDecodeError, UnicodeDecodeError):
        # Malformed JSON is reported by FastAPI's own parser, in the route's usual shape.
        return
    # Starlette's Request.json() returns this cached value, so the body is parsed once.
    request._json = value


class BoundedJsonRoute(APIRoute):
    """An APIRoute whose JSON body is checked by check_json_body before anything else."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            await check_json_body(request)
            response: Response = await handler(request)
            return response

        return checked


def json_router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes read JSON bodies within the limits."""
    return APIRouter(route_class=BoundedJsonRoute, **kwargs)
