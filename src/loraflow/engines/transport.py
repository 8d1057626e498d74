"""Plain-words reasons for HTTP transport failures of the remote engines (Ollama, OpenAI)."""

from __future__ import annotations

import httpx


def transport_reason(exc: httpx.TransportError, timeout: float, setting: str) -> str:
    """Why a request to a backend failed: unreachable, dropped, or too slow (naming `setting`)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g}s (raise {setting} for slow models)"
    # RemoteProtocolError, ReadError, WriteError: it accepted, then closed or reset.
    return f"dropped the connection ({type(exc).__name__}: {exc})"
