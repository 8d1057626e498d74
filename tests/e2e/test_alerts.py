"""Alerts on a real server with two workers, over HTTP, with a webhook receiver on 127.0.0.1.

One server (restarted once) for the module: a latency alert fires while a deployed adapter's
requests are above a lowered threshold and resolves when they stop, one alert for both
workers; the webhook gets the firing and the resolved event once each (not once per
worker), signed, after one refused delivery; alert state is still there after a restart,
and the UI's Status tab shows it; every metric the Prometheus rules and the Grafana
dashboard name is served; a canary whose weights are damaged mid-deployment raises the
error-rate alert, which resolves after the automatic rollback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME, make_adapter, start_server
from tests.e2e.server import Server

SECRET = "test-webhook-secret"
TARGET = "support"
PROMPT = [{"role": "user", "content": "Name a colour."}]


class Receiver:
    """A webhook endpoint that refuses its first delivery (503) and accepts the rest."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                entry = {"body": body, "signature": self.headers.get("X-Loraflow-Signature")}
                outer.attempts.append(entry)
                status = 503 if len(outer.attempts) == 1 else 200
                if status == 200:
                    outer.accepted.append(entry)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str, int]]:
        out = []
        for e in self.accepted:
            d = json.loads(e["body"])
            out.append((d["event"], d["alert"]["rule"], d["alert"]["id"]))
        return out


class Instance:
    """The module's server (two workers); restart() stops it and starts it again."""

    ARGS = ("serve", "--workers", "2")

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data, self.env = data, env
        self.stack = ExitStack()
        self.srv: Server = self.stack.enter_context(start_server(data, env, self.ARGS))

    def restart(self) -> None:
        self.stack.close()
        self.stack = ExitStack()
        self.srv = self.stack.enter_context(start_server(self.data, self.env, self.ARGS))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.srv.url, timeout=120)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.httpd.shutdown()


@pytest.fixture(scope="module")
def instance(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_dir: Path,
    server_env: dict[str, str],
    receiver: Receiver,
) -> Iterator[Instance]:
    data = tmp_path_factory.mktemp("alerts-data")
    make_adapter(smollm2_dir, data / "lora_adapters" / ADAPTER_NAME)
    env = {
        **server_env,
        "AUTO_INGEST_SAMPLE": "false",
        # Gradio's queue does not span workers; the Status tab's rows have a unit test.
        "ENABLE_UI": "false",
        "ALERT_EVAL_INTERVAL": "0.3",
        # Every rule off by default; each test lowers the one it exercises for its target.
        "ALERT_LATENCY_MS": "0",
        "ALERT_ERROR_RATE": "0",
        "ALERT_MEMORY_PERCENT": "0",
        "ALERT_GPU_MEMORY_PERCENT": "0",
        "ALERT_MIN_REQUESTS": "1",
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_WEBHOOK_SECRET": SECRET,
    }
    inst = Instance(data, env)
    with inst.client() as c:
        r = c.post(
            "/api/adapters/deploy", json={"target": TARGET, "adapter": ADAPTER_NAME, "force": True}
        )
        assert r.status_code == 200, r.text
    yield inst
    inst.stack.close()


def chat(c: httpx.Client) -> str:
    """One request to the target on a fresh connection (so either worker may take it)."""
    r = httpx.post(
        f"{c.base_url}/v1/chat/completions",
        json={"model": TARGET, "messages": PROMPT, "max_tokens": 2, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Loraflow-Worker"]


def wait_for(
    what: Callable[[], Any], timeout: float, step: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        if step is not None:
            step()
        else:
            time.sleep(0.3)
    raise AssertionError(f"not seen within {timeout}s")


def alerts_of(c: httpx.Client, rule: str) -> dict[str, list[dict[str, Any]]]:
    body = c.get("/api/alerts").json()
    return {k: [a for a in body[k] if a["rule"] == rule] for k in ("active", "recent")}


def test_latency_alert_fires_while_slow_then_resolves_and_notifies_once_each(
    instance: Instance, receiver: Receiver
) -> None:
    with instance.client() as c:
        bad = c.put(f"/api/alerts/rules/{TARGET}", json={"rules": {"latency": {"for": 1}}})
        assert bad.status_code in (400, 422) and "unknown alert rule 'latency'" in bad.text
        # Any generation takes longer than 1 ms: the target is "slow" while it is asked.
        r = c.put(
            f"/api/alerts/rules/{TARGET}",
            json={"rules": {"latency_p95": {"threshold": 1, "window": 10, "for": 1}}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["rules"]["latency_p95"]["threshold"] == 1
        assert alerts_of(c, "latency_p95") == {"active": [], "recent": []}

        def firing() -> list[dict[str, Any]]:
            return [a for a in alerts_of(c, "latency_p95")["active"] if a["state"] == "firing"]

        # Requests until both workers have served some and the alert fired: one alert over
        # the numbers of both, not one per worker.
        workers: set[str] = set()
        fired_list = wait_for(
            lambda: len(workers) == 2 and firing(), 180, step=lambda: workers.add(chat(c))
        )
        assert len(fired_list) == 1, fired_list
        fired = fired_list[0]
        assert fired["target"] == TARGET and fired["variant"] is None
        assert fired["value"] > 1 and fired["unit"] == "ms" and fired["comparison"] == "above"
        assert fired["fired_at"] >= fired["started_at"] and fired["ended_at"] is None

        # No more requests: the slow ones leave the 10 s window and the alert resolves.
        def resolved() -> list[dict[str, Any]]:
            return [a for a in alerts_of(c, "latency_p95")["recent"] if a["id"] == fired["id"]]

        done = wait_for(resolved, 60)[0]
        assert done["state"] == "resolved" and done["ended_at"] > done["fired_at"]
        assert alerts_of(c, "latency_p95")["active"] == []

    wait_for(lambda: len(receiver.accepted) >= 2, 30)
    time.sleep(1.5)  # a duplicate, if any, would arrive now
    assert receiver.events() == [
        ("firing", "latency_p95", fired["id"]),
        ("resolved", "latency_p95", fired["id"]),
    ]
    # The first delivery was refused and retried: three attempts, the first two the same body.
    assert len(receiver.attempts) == 3
    assert receiver.attempts[0]["body"] == receiver.attempts[1]["body"]
    for e in receiver.attempts:
        expected = "sha256=" + hmac.new(SECRET.encode(), e["body"], hashlib.sha256).hexdigest()
        assert e["signature"] == expected


def test_alert_state_survives_a_restart(instance: Instance, receiver: Receiver) -> None:
    with instance.client() as c:
        # A long window keeps the alert crossed across the restart (its samples are stored).
        c.put(
            f"/api/alerts/rules/{TARGET}",
            json={"rules": {"latency_p95": {"threshold": 1, "window": 600, "for": 0}}},
        )

        def firing() -> list[dict[str, Any]]:
            return [a for a in alerts_of(c, "latency_p95")["active"] if a["state"] == "firing"]

        before = wait_for(firing, 120, step=lambda: chat(c))[0]
        resolved_before = alerts_of(c, "latency_p95")["recent"]
    wait_for(lambda: ("firing", "latency_p95", before["id"]) in receiver.events(), 30)

    instance.restart()

    with instance.client() as c:
        time.sleep(2)  # several evaluations by the new process
        after = alerts_of(c, "latency_p95")
        assert [a["id"] for a in after["active"]] == [before["id"]]
        assert after["active"][0]["state"] == "firing"
        assert after["active"][0]["started_at"] == before["started_at"]
        assert after["recent"] == resolved_before
        rules = c.get(f"/api/alerts/rules/{TARGET}").json()["rules"]["latency_p95"]
        assert rules["window"] == 600
    # Still the same alert: the new process did not notify it again.
    assert [e for e in receiver.events() if e[2] == before["id"]] == [
        ("firing", "latency_p95", before["id"])
    ]


def test_every_metric_the_prometheus_rules_and_dashboard_name_is_served(
    instance: Instance,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.unit.test_monitoring_files import metric_names

    with instance.client() as c:
        chat(c)  # a generation request, so the per-route histogram has its buckets
        text = c.get("/metrics").text
    served = set()
    for family in text_string_to_metric_families(text):
        served.add(family.name)
        served.update(s.name for s in family.samples)
        # The worker that answers may not have served a generation yet: its counters and
        # histograms are declared (TYPE lines) without samples; Prometheus reads the same names.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        served.update(family.name + x for x in suffixes.get(family.type, []))
    named = metric_names()
    assert named - served == set(), f"named by the rules/dashboard but not served: {named - served}"
    # loraflow's own firing alert (from the restart test) is exported for Alertmanager.
    exported = [
        s.labels
        for f in text_string_to_metric_families(text)
        if f.name == "loraflow_alerts"
        for s in f.samples
        if s.value == 1
    ]
    assert {"rule": "latency_p95", "target": TARGET, "variant": "", "state": "firing"} in (
        exported
    ), [line for line in text.splitlines() if "alert" in line]


def test_error_rate_alert_fires_when_a_canary_is_damaged_and_resolves_after_rollback(
    instance: Instance,
) -> None:
    root = instance.data / "lora_adapters"
    shutil.copytree(root / ADAPTER_NAME, root / "fragile-bot")
    with instance.client() as c:
        assert c.post("/api/adapters/scan").status_code == 200
        r = c.put(
            f"/api/alerts/rules/{TARGET}",
            json={"rules": {"error_rate": {"threshold": 0.1, "window": 5, "for": 0}}},
        )
        assert r.status_code == 200, r.text
        r = c.post(
            "/api/adapters/deploy",
            json={
                "target": TARGET,
                "adapter": "fragile-bot",
                "strategy": "canary",
                "percent": 50,
                "step_requests": 10000,
                "min_requests": 6,
                "force": True,
            },
        )
        assert r.status_code == 200, r.text
        # Mid-deployment the canary's weights are damaged on disk and its loaded copy is
        # dropped: a request routed to it fails to attach it again (checksum).
        weights = root / "fragile-bot" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-16] + b"\x00" * 16)
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fragile-bot"}).status_code in (
            200,
            404,
        )

        def fired() -> list[dict[str, Any]]:
            both = alerts_of(c, "error_rate")
            return [
                a
                for a in both["active"] + both["recent"]
                if a["target"] == TARGET and a["fired_at"] is not None
            ]

        def rolled_back() -> bool:
            return c.get(f"/api/adapters/deployments/{TARGET}").json()["strategy"] == "replace"

        def ask() -> int:
            return httpx.post(
                f"{c.base_url}/v1/chat/completions",
                json={"model": TARGET, "messages": PROMPT, "max_tokens": 1, "temperature": 0},
                timeout=120,
            ).status_code

        # Requests (half to the damaged canary) until the alert fired and the canary is gone.
        codes: list[int] = []
        try:
            wait_for(lambda: fired() and rolled_back(), 90, step=lambda: codes.append(ask()))
        except AssertionError:
            state = c.get(f"/api/adapters/deployments/{TARGET}").json()
            raise AssertionError((codes, state, c.get("/api/alerts").json())) from None
        seen = fired()
        assert {a["variant"] for a in seen} >= {"canary"}, seen
        assert all(a["value"] > 0.1 and a["unit"] == "ratio" for a in seen), seen
        events = c.get(f"/api/adapters/deployments/{TARGET}/history").json()["events"]
        assert events[0]["action"] == "rollback" and events[0]["status"] == "auto"

        # The failures leave the 5 s window: every error-rate alert of the target resolves.
        def all_resolved() -> bool:
            return not [a for a in alerts_of(c, "error_rate")["active"] if a["target"] == TARGET]

        wait_for(all_resolved, 30)
        done = [a for a in alerts_of(c, "error_rate")["recent"] if a["target"] == TARGET]
        assert {a["id"] for a in seen} <= {a["id"] for a in done}
        assert all(a["state"] == "resolved" and a["ended_at"] for a in done)
