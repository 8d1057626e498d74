"""Faults: an Ollama or OpenAI-compatible backend that drops, half-answers or never answers.

A small real TCP server on 127.0.0.1 misbehaves in one way per test; each engine must raise
EngineUnavailable with a readable message within its timeout, and a stream cut midway must
end with an error, never hang or pass for a complete answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.ollama import OllamaEngine
from loraflow.engines.openai_http import OpenAIHTTPEngine
from loraflow.errors import EngineUnavailable

MESSAGES = [{"role": "user", "content": "Hi"}]
TIMEOUT = 1.5  # the engines' read timeout (OLLAMA_TIMEOUT) in these tests
# A silent server holds the connection this long: far past TIMEOUT, so an error that says
# "no answer within" proves the engine gave up by itself rather than waiting for the close.
HOLD = 30.0

OLLAMA_PIECE = b'{"message": {"role": "assistant", "content": "Hel"}, "done": false}\n'
OPENAI_PIECE = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(h.split(b":")[1])
            for h in head.split(b"\r\n")
            if h.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def close_at_once(conn: socket.socket) -> None:
    conn.close()


def close_after_request(conn: socket.socket) -> None:
    _read_request(conn)
    conn.close()


def half_a_response(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        b'{"message": {"role": "assis'
    )
    conn.close()


def never_answer(conn: socket.socket) -> None:
    _read_request(conn)
    time.sleep(HOLD)  # holds the connection open past any sane timeout
    conn.close()


def stream_cut_chunked(piece: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.close()  # no terminating chunk: the answer was cut

    return handle


def stream_cut_at_eof(piece: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        # No length, no chunks: the body ends when the connection does, so a cut looks
        # like a normal end unless the engine checks for the final record.
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + piece)
        conn.close()

    return handle


def stream_stalls(piece: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + piece)
        time.sleep(HOLD)
        conn.close()

    return handle


class Misbehaving:
    """A TCP server on 127.0.0.1 that hands every connection to `handler` in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handler = handler
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    servers: list[Misbehaving] = []

    def start(handler: Callable[[socket.socket], None]) -> str:
        servers.append(Misbehaving(handler))
        return servers[-1].url

    yield start
    for s in servers:
        s.close()


def ollama(url: str) -> OllamaEngine:
    return OllamaEngine(url, "tiny", timeout=TIMEOUT)


def openai(url: str) -> OpenAIHTTPEngine:
    return OpenAIHTTPEngine(f"{url}/v1", "tiny", timeout=TIMEOUT)


ENGINES = {"ollama": (ollama, OLLAMA_PIECE), "openai": (openai, OPENAI_PIECE)}
PARAMS = GenerationParams(max_new_tokens=8)


def failure(call: Callable[[], Any]) -> EngineUnavailable:
    with pytest.raises(EngineUnavailable) as info:
        call()
    return info.value


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (close_at_once, "dropped the connection"),
        (close_after_request, "dropped the connection"),
        (half_a_response, "dropped the connection"),
        (never_answer, f"no answer within {TIMEOUT:g}s"),
    ],
)
def test_a_failing_backend_is_a_clear_error_within_the_timeout(
    serve: Callable, kind: str, handler: Callable, expected: str
) -> None:
    make, _piece = ENGINES[kind]
    with make(serve(handler)) as engine:
        error = failure(lambda: engine.generate(MESSAGES, PARAMS))
        assert expected in str(error), str(error)
        assert "127.0.0.1" in error.message and "Traceback" not in str(error)
        # Health says the same, quickly, rather than raising.
        health = engine.health()
        assert not health.ok and "127.0.0.1" in health.detail


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("cut", [stream_cut_chunked, stream_cut_at_eof, stream_stalls])
def test_a_stream_cut_midway_ends_with_an_error(serve: Callable, kind: str, cut: Callable) -> None:
    make, piece = ENGINES[kind]
    with make(serve(cut(piece))) as engine:
        got: list[str] = []

        def consume() -> None:
            for text in engine.stream(MESSAGES, PARAMS):
                got.append(text)

        error = failure(consume)
        # The piece that arrived was passed on; then the stream failed instead of ending.
        assert got == ["Hel"]
        assert "mid-answer" in error.message, str(error)
        if cut is stream_stalls:
            assert f"no answer within {TIMEOUT:g}s" in error.message
