"""Which server process answered: `X-Loraflow-Worker: <pid>` on every HTTP response.

With several workers (`loraflow serve --workers N`) a client cannot choose the process that
takes its request; the header tells it which one did, e.g. to check that a change made
through one worker is seen by the others.
"""

from __future__ import annotations

import os

from loraflow.api.security import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-loraflow-worker"


class WorkerHeader:
    """Adds the worker's process id to every response, refused ones included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                # The pid is read per response: a forked worker has a new one.
                pid = str(os.getpid()).encode()
                msg["headers"] = [*msg.get("headers", []), (HEADER, pid)]
            await send(msg)

        await self.app(scope, receive, named_send)
