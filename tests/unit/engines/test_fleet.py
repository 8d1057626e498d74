"""The fleet engine against real tiny OpenAI-compatible HTTP servers: balancing, ejection,
retry before the first byte, reloading lost adapters, loading everywhere or nowhere."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.fleet import OpenAIFleet
from loraflow.errors import EngineUnavailable, InvalidInput, NotFound

MODEL = "tiny"
HI = [{"role": "user", "content": "Hi"}]
PARAMS = GenerationParams(max_new_tokens=4, temperature=0.0)


class Replica:
    """A tiny vLLM: lists its models, answers chats with its own name, loads adapters."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.adapters: dict[str, str] = {}
        self.chats: list[dict[str, Any]] = []
        self.hold = threading.Event()
        self.hold.set()  # cleared: chats wait until it is set again
        self.status = 200  # of chats; 503 plays a replica that is starting
        self.cut_stream = False  # stream one piece, then drop the connection
        self.refuse_loads = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request a connection: a stop is a stop

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                ids = [MODEL, *outer.adapters]
                self._send(200, {"data": [{"id": i, "parent": MODEL} for i in ids]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/load_lora_adapter"):
                    if outer.refuse_loads:
                        self._send(422, {"error": {"message": "max_lora_rank is 8"}})
                        return
                    if body["lora_name"] in outer.adapters:  # as vLLM answers a second load
                        self._send(400, {"error": {"message": "already been loaded"}})
                        return
                    outer.adapters[body["lora_name"]] = body["lora_path"]
                    self._send(200, {})
                elif self.path.endswith("/unload_lora_adapter"):
                    found = outer.adapters.pop(body["lora_name"], None)
                    self._send(200 if found else 404, {"error": {"message": "not loaded"}})
                else:
                    self._chat(body)

            def _chat(self, body: dict[str, Any]) -> None:
                outer.chats.append(body)
                outer.hold.wait(30)
                if outer.status != 200:
                    self._send(outer.status, {"error": {"message": "starting"}})
                    return
                if body["model"] not in (MODEL, *outer.adapters):
                    self._send(404, {"error": {"message": f"no model {body['model']}"}})
                    return
                if not body.get("stream"):
                    message = {"content": outer.name}
                    choice = {"message": message, "finish_reason": "stop"}
                    usage = {"prompt_tokens": 1, "completion_tokens": 1}
                    self._send(200, {"choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                chunk = {"choices": [{"delta": {"content": outer.name}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if outer.cut_stream:
                    self.close_connection = True
                    return
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def pair() -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica("A"), Replica("B")
    yield a, b
    a.stop()
    b.stop()


def test_concurrent_requests_go_to_the_replica_with_fewest_in_flight(pair) -> None:
    a, b = pair
    a.hold.clear()
    b.hold.clear()
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        answers: list[str] = []
        threads = [
            threading.Thread(target=lambda: answers.append(fleet.generate(HI, PARAMS).text))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        # Every request is held by the replica it went to: they are all in flight at once.
        while len(a.chats) + len(b.chats) < 6:
            threading.Event().wait(0.01)
        assert [r["outstanding"] for r in fleet.status()] == [3, 3]
        assert (len(a.chats), len(b.chats)) == (3, 3)
        a.hold.set()
        b.hold.set()
        for t in threads:
            t.join()
        assert sorted(answers) == ["A"] * 3 + ["B"] * 3
        assert [r["outstanding"] for r in fleet.status()] == [0, 0]


def test_a_dead_replica_is_ejected_and_its_request_answered_by_another(pair) -> None:
    a, b = pair
    a.stop()  # connections to it are refused
    with OpenAIFleet([a.url, b.url], MODEL, eject_seconds=3600) as fleet:
        # Whichever replica the first request picks, every request gets B's answer.
        assert [fleet.generate(HI, PARAMS).text for _ in range(4)] == ["B"] * 4
        assert len(b.chats) == 4
        dead, alive = fleet.status()
        assert dead["healthy"] is False and "unreachable" in str(dead["error"])
        assert alive["healthy"] is True and alive["outstanding"] == 0
        # A stream is sent elsewhere too when the replica failed before its first byte.
        assert "".join(fleet.stream(HI, PARAMS)) == "B"


def test_an_ejected_replica_is_tried_again_after_its_time(pair) -> None:
    a, b = pair
    a.status = 503
    with OpenAIFleet([a.url, b.url], MODEL, eject_seconds=0.2) as fleet:
        for _ in range(2):  # the first request may or may not start on A
            assert fleet.generate(HI, PARAMS).text == "B"
        assert fleet.status()[0]["healthy"] is False
        a.status = 200
        threading.Event().wait(0.3)  # past the ejection
        texts = {fleet.generate(HI, PARAMS).text for _ in range(4)}
        assert texts == {"A", "B"}
        assert fleet.status()[0]["healthy"] is True


def test_a_request_is_retried_once_only(pair) -> None:
    a, b = pair
    a.status = b.status = 503
    with OpenAIFleet([a.url, b.url], MODEL, eject_seconds=3600) as fleet:
        with pytest.raises(EngineUnavailable, match="HTTP 503"):
            fleet.generate(HI, PARAMS)
        assert len(a.chats) + len(b.chats) == 2
        # Both ejected: the next request still tries the one whose ejection ends first (once)
        # and says what it answered now, rather than refusing untried.
        with pytest.raises(EngineUnavailable, match="HTTP 503"):
            fleet.generate(HI, PARAMS)
        assert len(a.chats) + len(b.chats) == 3
        a.status = 200
        b.status = 200
        assert fleet.generate(HI, PARAMS).text in ("A", "B")


def test_a_stream_cut_after_its_first_piece_is_not_sent_again(pair) -> None:
    a, b = pair
    a.cut_stream = b.cut_stream = True
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        pieces: list[str] = []
        with pytest.raises(EngineUnavailable, match="mid-answer"):
            pieces.extend(fleet.stream(HI, PARAMS))
        assert len(pieces) == 1 and len(a.chats) + len(b.chats) == 1


def test_a_replica_that_lost_its_adapters_gets_them_back_before_requests_for_them(
    pair,
) -> None:
    a, b = pair
    with OpenAIFleet([a.url, b.url], MODEL, eject_seconds=3600) as fleet:
        fleet.load_everywhere("bot@v1", "/adapters/bot/v1")
        fleet.want({"bot@v1": "/adapters/bot/v1"})
        assert a.adapters == b.adapters == {"bot@v1": "/adapters/bot/v1"}
        fleet.load_everywhere("bot@v1", "/adapters/bot/v1")  # loaded already: nothing to do
        a.adapters.clear()  # A restarted: run-time adapters are gone
        # A request for the adapter that reaches A is answered by B instead...
        assert {fleet.generate(HI, PARAMS, adapter="bot@v1").text for _ in range(3)} == {"B"}
        assert fleet.status()[0]["missing_adapters"] == ["bot@v1"]
        # ...while requests for the base model still go to A.
        assert {fleet.generate(HI, PARAMS).text for _ in range(2)} == {"A", "B"}
        fleet.poll()  # loads it there again
        assert a.adapters == {"bot@v1": "/adapters/bot/v1"}
        assert fleet.status()[0]["missing_adapters"] == []
        assert {fleet.generate(HI, PARAMS, adapter="bot@v1").text for _ in range(2)} == {
            "A",
            "B",
        }


def test_a_replica_down_at_a_poll_serves_adapters_again_only_once_reloaded(pair) -> None:
    a, b = pair
    fleet = OpenAIFleet([a.url, b.url], MODEL, eject_seconds=0.01)
    fleet.want({"bot@v1": "/adapters/bot/v1"})
    fleet.poll()
    assert a.adapters and b.adapters
    a.stop()
    fleet.poll()
    assert fleet.status()[0]["healthy"] is False
    revived = Replica("A", a.port)  # restarted on the same port, with no adapters
    try:
        threading.Event().wait(0.05)  # past the ejection
        # Not proven to hold the adapter yet: no request for it goes there.
        assert {fleet.generate(HI, PARAMS, adapter="bot@v1").text for _ in range(3)} == {"B"}
        assert revived.chats == []
        fleet.poll()
        assert revived.adapters == {"bot@v1": "/adapters/bot/v1"}
        assert "A" in {fleet.generate(HI, PARAMS, adapter="bot@v1").text for _ in range(3)}
    finally:
        fleet.close()
        revived.stop()


def test_a_load_one_replica_refuses_is_undone_on_the_others(pair) -> None:
    a, b = pair
    b.refuse_loads = True
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        with pytest.raises(InvalidInput, match="max_lora_rank is 8"):
            fleet.load_everywhere("big@v1", "/adapters/big/v1")
        assert a.adapters == {} and b.adapters == {}
        assert fleet.unload_everywhere("big@v1") == []  # absent everywhere is fine


@pytest.mark.parametrize("stream", [False, True])
def test_an_unload_with_drain_lets_the_answers_in_flight_on_the_adapter_finish(
    pair, stream: bool
) -> None:
    a, b = pair
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        fleet.load_everywhere("bot@v1", "/adapters/bot/v1")
        fleet.want({})  # retired: nothing routes new requests to it
        a.hold.clear()
        b.hold.clear()
        answers: list[str] = []

        def ask() -> None:
            if stream:
                answers.append("".join(fleet.stream(HI, PARAMS, adapter="bot@v1")))
            else:
                answers.append(fleet.generate(HI, PARAMS, adapter="bot@v1").text)

        asking = threading.Thread(target=ask)
        asking.start()
        while len(a.chats) + len(b.chats) < 1:
            threading.Event().wait(0.01)
        assert fleet.in_flight("bot@v1") == 1
        unloading = threading.Thread(target=fleet.unload_everywhere, args=("bot@v1", 30.0))
        unloading.start()
        unloading.join(0.5)
        # Still loaded everywhere while the answer is being generated.
        assert unloading.is_alive() and "bot@v1" in a.adapters and "bot@v1" in b.adapters
        a.hold.set()
        b.hold.set()
        asking.join(30)
        unloading.join(30)
        assert answers and answers[0] in ("A", "B")
        assert a.adapters == {} and b.adapters == {} and fleet.in_flight("bot@v1") == 0


def test_an_unload_without_drain_cuts_the_answer_in_flight(pair) -> None:
    a, b = pair
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        fleet.load_everywhere("bot@v1", "/adapters/bot/v1")
        fleet.want({})
        a.hold.clear()
        b.hold.clear()
        errors: list[Exception] = []

        def ask() -> None:
            try:
                fleet.generate(HI, PARAMS, adapter="bot@v1")
            except Exception as exc:
                errors.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        while len(a.chats) + len(b.chats) < 1:
            threading.Event().wait(0.01)
        assert fleet.unload_everywhere("bot@v1") == []
        a.hold.set()
        b.hold.set()
        asking.join(30)
        assert len(errors) == 1 and isinstance(errors[0], NotFound)
        assert fleet.in_flight("bot@v1") == 0


def test_a_version_wanted_again_while_its_unload_waits_stays_loaded(pair) -> None:
    a, b = pair
    with OpenAIFleet([a.url, b.url], MODEL) as fleet:
        fleet.load_everywhere("bot@v1", "/adapters/bot/v1")
        fleet.want({})  # retired...
        a.hold.clear()
        b.hold.clear()
        asking = threading.Thread(target=fleet.generate, args=(HI, PARAMS, "bot@v1"))
        asking.start()
        while len(a.chats) + len(b.chats) < 1:
            threading.Event().wait(0.01)
        unloading = threading.Thread(target=fleet.unload_everywhere, args=("bot@v1", 30.0))
        unloading.start()
        fleet.want({"bot@v1": "/adapters/bot/v1"})  # ...and restored by a rollback meanwhile
        a.hold.set()
        b.hold.set()
        asking.join(30)
        unloading.join(30)
        assert "bot@v1" in a.adapters and "bot@v1" in b.adapters
