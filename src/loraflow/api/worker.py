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
                headers = list(msg.get("headers", []))
                # The error handler names the worker itself (its 500s are sent outside this
                # middleware); a handled error passing through here must not get it twice.
                if all(name.lower() != HEADER for name, _ in headers):
                    # The pid is read per response: a forked worker has a new one.
                    headers.append((HEADER, str(os.getpid()).encode()))
                msg["headers"] = headers
            await send(msg)

        await self.app(scope, receive, named_send)
