"""Hostile and unexpected input on every JSON, form and multipart route of /openapi.json.

Each request of a generated corpus (deep nesting, NaN/Infinity, huge numbers, lone surrogates,
byte-order marks, wrong types per field, duplicate keys, empty bodies, wrong content types)
must be answered without a server fault, in the route family's error shape, and a refused
request must leave the data dir (files and database rows) exactly as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraflow.api.compat import OLLAMA_PATHS
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 5_000 + "1" + "}" * 5_000
# (label, body, content type): refused before any route logic, whatever the route.
REFUSED_BODIES: list[tuple[str, bytes, str]] = [
    ("deep array", DEEP.encode(), "application/json"),
    ("deep object", DEEP_OBJECT.encode(), "application/json"),
    ("deep, no content type", DEEP.encode(), ""),
    ("NaN", b'{"model": "x", "value": NaN}', "application/json"),
    ("-Infinity", b'{"value": -Infinity}', "application/json"),
    ("1e999", b'{"value": 1e999}', "application/json"),
    ("5000-digit integer", b'{"value": ' + b"9" * 5000 + b"}", "application/json"),
    ("lone surrogate", b'{"model": "\\ud800", "prompt": "\\udc00"}', "application/json"),
    # Over the fuzz server's JSON_MAX_ITEMS of 300,000.
    ("too many elements", b"[" + b"0," * 400_000 + b"0]", "application/json"),
    ("not UTF-8", b'{"model": "\xff\xfe\xfa"}', "application/json"),
]
# Answered as the route sees fit, but never with a fault.
ODD_BODIES: list[tuple[str, bytes, str]] = [
    ("BOM", b'\xef\xbb\xbf{"model": "x"}', "application/json"),
    ("duplicate keys", b'{"model": "a", "model": "b"}', "application/json"),
    ("empty", b"", "application/json"),
    ("whitespace", b"  \n ", "application/json"),
    ("array", b"[]", "application/json"),
    ("string", b'"x"', "application/json"),
    ("null", b"null", "application/json"),
    ("broken", b'{"model": ', "application/json"),
    ("text/plain", b'{"model": "x"}', "text/plain"),
    ("xml", b"<a/>", "application/xml"),
    ("json+suffix deep", DEEP.encode(), "application/vnd.api+json"),
]
WRONG_VALUES: list[Any] = [[], {}, 1e308, -1, "\u00e9" * 3000, None, True]
# Each refused, but for the byte-order mark in front of good JSON, which is read.
FILES: list[tuple[str, bytes]] = [
    ("deep.json", DEEP.encode()),
    ("deep.jsonl", b'{"instruction": "a", "output": "b"}\n' + DEEP.encode() + b"\n"),
    ("nan.jsonl", b'{"instruction": "a", "output": NaN}\n'),
    ("surrogate.jsonl", b'{"instruction": "\\ud800", "output": "b"}\n'),
    ("bom.json", b'\xef\xbb\xbf[{"instruction": "a", "output": "b"}]'),
    ("empty.json", b""),
    ("many.json", b"[" + b"0," * 400_000 + b"0]"),
    ("notes.exe", b"MZ\x90\x00"),
]
# Not the user's data: the server's own log and lock, and the database (compared by rows).
SKIPPED = ("server.log", ".service.lock")
# Nor the server's monitoring, which samples itself on a clock (alerts: services/alerts.py).
SKIPPED_TABLES = ("monitor_requests", "monitor_resources", "alerts")


@pytest.fixture(scope="module")
def api(fuzz_server: Server) -> Iterator[tuple[Server, dict[str, Any]]]:
    schema = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()
    yield fuzz_server, schema


def _operations(schema: dict[str, Any], kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, body schema) of every operation whose request body is of `kind`."""
    found = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            if kind in content:
                body = _resolve(schema, content[kind].get("schema", {}))
                found.append((method.upper(), _fill(path), body))
    return found


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return node


def _fill(path: str) -> str:
    # Path parameters get a plain value; the corpus is about the body.
    parts = [("1" if "id" in p else "hostile") if p.startswith("{") else p for p in path.split("/")]
    return "/".join(parts)


def _snapshot(data: Path) -> dict[str, Any]:
    # Size and modification time, not content: the data dir may hold a converted base model
    # (half a gigabyte) that hashing after every request would read again and again.
    files = {}
    for f in sorted(data.rglob("*")):
        if f.is_file() and f.name not in SKIPPED and ".db" not in f.name:
            st = f.stat()
            files[str(f.relative_to(data))] = (st.st_size, st.st_mtime_ns)
    rows = {}
    for db in data.glob("*.db"):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            tables = [
                r[0] for r in con.execute("select name from sqlite_master where type='table'")
            ]
            for t in (t for t in tables if t not in SKIPPED_TABLES):
                rows[f"{db.name}:{t}"] = con.execute(f'select count(*) from "{t}"').fetchone()[0]
    return {"files": files, "rows": rows}


def _check_shape(path: str, response: httpx.Response) -> None:
    body = response.json()
    if path.startswith("/v1/"):
        assert isinstance(body["error"]["message"], str) and body["error"]["type"], body
    elif path in OLLAMA_PATHS:
        assert isinstance(body["error"], str) and body["error"], body
    else:
        assert body.get("detail"), body


class Probe:
    """Sends requests and checks each answer and what it left behind."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self.before = _snapshot(server.data_dir)
        self.sent = 0

    def send(self, method: str, path: str, label: str, *, refused: bool, **kw: Any) -> int:
        response = self.client.request(method, path, **kw)
        self.sent += 1
        status = response.status_code
        where = f"{method} {path} [{label}] -> {status}: {response.text[:300]}"
        # 503 is the honest answer of a route whose engine is down (no local model, no Ollama).
        assert status < 500 or status == 503, f"{where}\n{self.server.log()[-1500:]}"
        if refused:
            assert 400 <= status < 500, where
        if status >= 400:
            _check_shape(path, response)
            after = _snapshot(self.server.data_dir)
            assert after == self.before, f"{where} left something behind"
        else:
            self.before = _snapshot(self.server.data_dir)
        return status


def test_json_routes_refuse_hostile_bodies_cleanly(api: tuple[Server, dict[str, Any]]) -> None:
    server, schema = api
    operations = _operations(schema, "application/json")
    assert len(operations) >= 20  # the corpus really covers the API
    probe = Probe(server)
    for method, path, _ in operations:
        for label, body, ctype in REFUSED_BODIES:
            headers = {"content-type": ctype} if ctype else {}
            probe.send(method, path, label, refused=True, content=body, headers=headers)
        for label, body, ctype in ODD_BODIES:
            refused = label == "json+suffix deep"
            headers = {"content-type": ctype}
            probe.send(method, path, label, refused=refused, content=body, headers=headers)
    print(f"{probe.sent} hostile bodies on {len(operations)} JSON operations")


def test_json_routes_answer_wrong_types_per_field(api: tuple[Server, dict[str, Any]]) -> None:
    server, schema = api
    probe = Probe(server)
    for method, path, body in _operations(schema, "application/json"):
        for field in body.get("properties", {}):
            for value in WRONG_VALUES:
                label = f"{field}={str(value)[:20]!r}"
                probe.send(method, path, label, refused=False, json={field: value})
    assert probe.sent >= 100


def test_upload_routes_refuse_hostile_files_and_keep_nothing(
    api: tuple[Server, dict[str, Any]],
) -> None:
    server, schema = api
    operations = _operations(schema, "multipart/form-data")
    paths = {p for _, p, _ in operations}
    assert {"/documents", "/api/simple-lora/upload-dataset"} <= paths
    probe = Probe(server)
    for method, path, body in operations:
        fields = body.get("properties", {})
        file_fields = [f for f, s in fields.items() if _is_file(s)]
        plain = {
            f: "alpaca" if f == "dataset_type" else "x" for f in fields if f not in file_fields
        }
        plain.pop("name", None)
        for name, content in FILES:
            files = [(f, (name, content, "application/octet-stream")) for f in file_fields]
            refused = name != "bom.json"
            probe.send(method, path, name, refused=refused, files=files, data=plain)
        for label, body_bytes, ctype in REFUSED_BODIES[:2] + ODD_BODIES[:2]:
            probe.send(
                method,
                path,
                label,
                refused=True,
                content=body_bytes,
                headers={"content-type": ctype},
            )
    print(f"{probe.sent} hostile uploads on {len(operations)} multipart operations")


def _is_file(node: dict[str, Any]) -> bool:
    if node.get("format") == "binary" or node.get("contentMediaType"):
        return True
    items = node.get("items", {})
    return items.get("format") == "binary" or bool(items.get("contentMediaType"))


def test_train_form_refuses_unknown_fields_and_hostile_params(
    api: tuple[Server, dict[str, Any]],
) -> None:
    server, _ = api
    probe = Probe(server)
    form = {
        "task_name": "t",
        "base_model": "smollm2",
        "dataset_filename": "0" * 32 + ".json",
    }
    path = "/api/simple-lora/train"
    cases: list[tuple[str, dict[str, str]]] = [
        ("misspelt field", {**form, "num_epochs": "1"}),
        ("deep training_params", {**form, "training_params": DEEP}),
        ("NaN training_params", {**form, "training_params": '{"lr": NaN}'}),
        ("unknown training_params key", {**form, "training_params": '{"warmup": 1}'}),
        ("array training_params", {**form, "training_params": "[1]"}),
        ("clashing names", {**form, "epochs": "2", "num_train_epochs": "1"}),
    ]
    for label, data in cases:
        probe.send("POST", path, label, refused=True, data=data)
    response = probe.client.post(path, data={**form, "num_epochs": "1"})
    detail = response.json()
    assert response.status_code == 422
    assert "unknown training parameter(s) ['num_epochs']" in detail["detail"]
    assert "num_train_epochs (= epochs)" in detail["hint"]
    # An alias is taken: the request goes on to the dataset check (not uploaded here).
    response = probe.client.post(path, data={**form, "num_train_epochs": "1"})
    assert response.status_code == 404 and "was not uploaded here" in response.json()["detail"]


def test_compat_routes_keep_framework_statuses_in_their_shape(
    api: tuple[Server, dict[str, Any]],
) -> None:
    server, _ = api
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(
            "/v1/chat/completions",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.post(
            "/v1/chat/completions", content=DEEP, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "JSON_MAX_DEPTH" in r.json()["error"]["message"]
        r = c.post("/api/chat", content=DEEP, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON_MAX_DEPTH" in r.json()["error"]
        r = c.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["message"] == "Method Not Allowed"
        r = c.get("/v1/no-such-route")
        assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"
        r = c.get("/api/chat")
        assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
        big = b'{"model": "x", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
        r = c.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "MAX_BODY_MB" in r.json()["error"]["message"]
        # loraflow's own routes keep FastAPI's shape.
        r = c.post("/ask", content=DEEP, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "JSON_MAX_DEPTH" in r.json()["detail"]
        r = c.get("/api/no-such-route")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
