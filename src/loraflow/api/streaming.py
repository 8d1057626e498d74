"""Stream a thread-backed generator over HTTP without blocking the event loop, and stop the
generation when the client goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

_END = object()


def _next(it: Iterator[Any]) -> Any:
    # StopIteration cannot cross a thread-pool future; it becomes a sentinel instead.
    try:
        return next(it)
    except StopIteration:
        return _END


async def _bridge(lines: Iterator[str], close: Callable[[], None]) -> AsyncIterator[str]:
    try:
        while True:
            # Each next() runs in a worker thread; the engine's own thread feeds it.
            line = await run_in_threadpool(_next, lines)
            if line is _END:
                return
            yield line
    finally:
        # Reached on completion and when the server cancels us on a client disconnect; the
        # pending next() has returned by then (thread-pool calls finish before cancelling).
        close_lines = getattr(lines, "close", None)
        if close_lines is not None:
            close_lines()
        close()


def stream_response(
    lines: Iterator[str], close: Callable[[], None], media_type: str
) -> StreamingResponse:
    """A response that sends `lines` as they come and calls `close` however it ends."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_bridge(lines, close), media_type=media_type, headers=headers)
