"""Adapter registry and deployments on the running server, driven over HTTP.

Covers: scan and on-demand serving, the quality gate, a blue-green switch under concurrent
requests with zero failures, an A/B split and a canary step-up over real requests, a
deploy whose adapter fails its health check (the previous one keeps serving), automatic
rollback when a variant's live error rate crosses the limit, and manual rollback.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.e2e.conftest import ADAPTER_NAME, make_adapter, start_server
from tests.e2e.server import Server

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, server_env: dict[str, str]
) -> Iterator[Server]:
    """A server of its own: these tests register, attach and deploy many adapters."""
    data = tmp_path_factory.mktemp("deploy-data")
    make_adapter(smollm2_dir, data / "lora_adapters" / ADAPTER_NAME)
    with start_server(data, {**server_env, "AUTO_INGEST_SAMPLE": "false"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def adapters(server: Server, smollm2_dir: Path) -> dict[str, str]:
    """Two more adapters in the server's LORA_MODEL_PATH, one of them with NaN weights."""
    root = server.data_dir / "lora_adapters"
    make_adapter(smollm2_dir, root / "second-bot", seed=1)  # not a copy of the first one
    broken = shutil.copytree(root / "second-bot", root / "nan-bot")
    weights = load_file(broken / "adapter_model.safetensors")
    poisoned = {
        k: (torch.full_like(v, float("nan")) if "lora_B" in k else v) for k, v in weights.items()
    }
    save_file(poisoned, broken / "adapter_model.safetensors")
    with httpx.Client(base_url=server.url, timeout=120) as c:
        found = c.post("/api/adapters/scan").json()
    added = {r["name"] for r in found["added"]}
    assert {"second-bot", "nan-bot"} <= added
    return {"first": ADAPTER_NAME, "second": "second-bot", "nan": "nan-bot"}


def chat(client: httpx.Client, model: str, max_tokens: int = 6) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0},
    )


def answer(client: httpx.Client, model: str) -> str:
    r = chat(client, model)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_scanned_adapters_are_listed_and_served_on_first_use(
    client: httpx.Client, adapters: dict[str, str]
) -> None:
    listed = client.get("/api/adapters").json()
    names = {a["name"] for a in listed["adapters"]}
    assert {ADAPTER_NAME, "second-bot"} <= names
    one = client.get("/api/adapters/second-bot").json()
    assert one["compatibility"]["compatible"] is True
    assert one["rank"] == 8 and len(one["checksum_sha256"]) == 64
    # Not attached at start (it arrived later), yet a request by name works.
    assert answer(client, "second-bot") != answer(client, "base")


def test_deploy_is_refused_without_a_passing_validation_unless_forced(
    client: httpx.Client, adapters: dict[str, str]
) -> None:
    r = client.post("/api/adapters/deploy", json={"target": "gated", "adapter": "second-bot"})
    assert r.status_code == 422
    assert "quality gate" in r.json()["detail"] and "no validation report" in r.json()["detail"]
    assert client.get("/api/adapters/deployments/gated").status_code == 404
    bad = client.post(
        "/api/adapters/deploy",
        json={"target": "base", "adapter": "second-bot", "force": True},
    )
    assert bad.status_code == 422 and "already the name of a model" in bad.json()["detail"]
    unknown = client.post(
        "/api/adapters/deploy", json={"target": "x1", "adapter": "missing-bot", "force": True}
    )
    assert unknown.status_code == 404


def test_blue_green_switch_under_concurrent_requests_has_zero_failures(
    client: httpx.Client, server: Server, adapters: dict[str, str]
) -> None:
    r = client.post(
        "/api/adapters/deploy",
        json={"target": "prod", "adapter": ADAPTER_NAME, "strategy": "replace", "force": True},
    )
    assert r.status_code == 200, r.text
    assert [s["step"] for s in r.json()["steps"]] == [
        "environment_check",
        "quality_gate",
        "load",
        "health_check",
        "switch",
        "rollback_plan",
    ]
    before = answer(client, "prod")
    assert before == answer(client, ADAPTER_NAME)

    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            while not stop.is_set() and len(statuses) < 200:
                statuses.append(chat(c, "prod", max_tokens=2).status_code)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        switched = client.post(
            "/api/adapters/deploy",
            json={
                "target": "prod",
                "adapter": "second-bot",
                "strategy": "blue_green",
                "force": True,
            },
        )
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert switched.status_code == 200, switched.text
    state = switched.json()["state"]
    assert state["color"] == "green" and state["standby"]["adapter"] == f"{ADAPTER_NAME}@v1"
    assert statuses and set(statuses) == {200}, statuses
    assert answer(client, "prod") == answer(client, "second-bot")

    back = client.post("/api/adapters/deployments/prod/rollback")
    assert back.status_code == 200
    assert answer(client, "prod") == before
    again = client.post("/api/adapters/deployments/prod/rollback")
    assert again.status_code == 409 and "nothing to roll back" in again.json()["detail"]


def test_failed_health_check_leaves_the_previous_deployment_serving(
    client: httpx.Client, adapters: dict[str, str]
) -> None:
    first = client.post(
        "/api/adapters/deploy",
        json={"target": "safe", "adapter": "second-bot", "force": True},
    )
    assert first.status_code == 200
    version = first.json()["version"]
    r = client.post(
        "/api/adapters/deploy",
        json={"target": "safe", "adapter": "nan-bot", "strategy": "blue_green", "force": True},
    )
    assert r.status_code == 422
    assert "failed its health check" in r.json()["detail"]
    assert "previous deployment keeps serving" in r.json()["detail"]
    now = client.get("/api/adapters/deployments/safe").json()
    assert now["version"] == version
    assert now["state"]["variants"][0]["adapter"] == "second-bot@v1"
    assert answer(client, "safe") == answer(client, "second-bot")
    used = client.delete("/api/adapters/second-bot")
    assert used.status_code == 409 and "'safe'" in used.json()["detail"]
    events = client.get("/api/adapters/deployments/safe/history").json()["events"]
    assert events[0]["status"] == "failed" and "health check" in events[0]["detail"]["error"]


def test_ab_split_and_canary_step_up_over_real_requests(
    client: httpx.Client, adapters: dict[str, str]
) -> None:
    client.post(
        "/api/adapters/deploy", json={"target": "ab", "adapter": ADAPTER_NAME, "force": True}
    )
    r = client.post(
        "/api/adapters/deploy",
        json={
            "target": "ab",
            "adapter": "second-bot",
            "strategy": "ab",
            "split": [70, 30],
            "force": True,
            # No latency rollback for this one: a one-token answer's time is mostly its wait
            # behind the other requests, so on a busy machine one stalled B request (B's p95
            # over its first 20 is its slowest) can be 3x A's p95 and end the split before
            # it is read. The latency judgement has unit tests; the error-rate rollback stays.
            "max_latency_ratio": 1e9,
        },
    )
    assert r.status_code == 200, r.text
    n = 120
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: chat(client, "ab", max_tokens=1).status_code, range(n)))
    assert set(codes) == {200}
    ab = client.get("/api/adapters/deployments/ab").json()
    # Still the 70/30 split: no automatic rollback ended it while the requests ran.
    events = client.get("/api/adapters/deployments/ab/history").json()["events"]
    assert [(v["name"], v["weight"]) for v in ab["state"]["variants"]] == [
        ("A", 70.0),
        ("B", 30.0),
    ], events[0]
    live = ab["live"]
    assert live["A"]["requests"] + live["B"]["requests"] == n
    # 30% of 120 = 36; binomial sd ~5.0, so 3.5 sd either side. A 50/50 split (60) or
    # an unweighted pick would land outside.
    assert 19 <= live["B"]["requests"] <= 53, live
    assert live["B"]["errors"] == 0 and live["B"]["latency_p95_s"] is not None

    client.post(
        "/api/adapters/deploy", json={"target": "can", "adapter": ADAPTER_NAME, "force": True}
    )
    r = client.post(
        "/api/adapters/deploy",
        json={
            "target": "can",
            "adapter": "second-bot",
            "strategy": "canary",
            "percent": 25,
            "schedule": [25, 60],
            "step_requests": 5,
            "force": True,
            # As for the A/B split above: the step-up is under test, not the latency judgement,
            # which one stalled request on a busy machine could trip.
            "max_latency_ratio": 1e9,
        },
    )
    assert r.status_code == 200, r.text
    for _ in range(200):
        chat(client, "can", max_tokens=1)
        if client.get("/api/adapters/deployments/can").json()["strategy"] == "replace":
            break
    final = client.get("/api/adapters/deployments/can").json()
    assert final["state"]["variants"] == [
        {"name": "stable", "adapter": "second-bot@v1", "weight": 100.0}
    ]
    actions = [
        e["action"] for e in client.get("/api/adapters/deployments/can/history").json()["events"]
    ]
    assert actions.count("canary_step") == 2
    # Rolling back a promoted canary restores what the canary deploy replaced.
    back = client.post("/api/adapters/deployments/can/rollback").json()
    assert back["state"]["variants"][0]["adapter"] == f"{ADAPTER_NAME}@v1"


def test_live_error_rate_rolls_a_canary_back_automatically(
    client: httpx.Client, server: Server, adapters: dict[str, str]
) -> None:
    root = server.data_dir / "lora_adapters"
    shutil.copytree(root / "second-bot", root / "fragile-bot")
    assert client.post("/api/adapters/scan").status_code == 200
    client.post(
        "/api/adapters/deploy", json={"target": "live", "adapter": ADAPTER_NAME, "force": True}
    )
    r = client.post(
        "/api/adapters/deploy",
        json={
            "target": "live",
            "adapter": "fragile-bot",
            "strategy": "canary",
            "percent": 50,
            "step_requests": 10000,
            "force": True,
        },
    )
    assert r.status_code == 200, r.text
    # The canary's files get damaged on disk and its loaded copy is dropped: every request
    # routed to it now fails to attach it (checksum), which the live numbers must catch.
    weights = root / "fragile-bot" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\x00" * 16)
    assert (
        client.post("/v1/unload_lora_adapter", json={"lora_name": "fragile-bot"}).status_code == 200
    )
    failures = 0
    for _ in range(150):
        if chat(client, "live", max_tokens=1).status_code != 200:
            failures += 1
        if client.get("/api/adapters/deployments/live").json()["strategy"] == "replace":
            break
    final = client.get("/api/adapters/deployments/live").json()
    assert final["state"]["variants"][0]["adapter"] == f"{ADAPTER_NAME}@v1"
    assert len(final["state"]["variants"]) == 1
    assert failures >= 20  # DEPLOY_MIN_REQUESTS before the judgement
    event = client.get("/api/adapters/deployments/live/history").json()["events"][0]
    assert event["action"] == "rollback" and event["status"] == "auto"
    assert "error rate" in event["detail"]["reason"]
    # The failed trial is not offered back by a manual rollback.
    assert client.post("/api/adapters/deployments/live/rollback").status_code == 409
    assert chat(client, "live", max_tokens=1).status_code == 200
    # Per-variant and per-adapter numbers are exported for Prometheus.
    metrics = client.get("/metrics").text
    share = (
        'loraflow_deployment_traffic_percent{adapter="support-bot@v1",target="live",'
        'variant="stable"}'
    )
    assert f"{share} 100.0" in metrics
    served = re.search(
        r'loraflow_tokens_total\{kind="completion",model="support-bot"\} (\d+)', metrics
    )
    assert served and int(float(served.group(1))) > 0


def test_merge_validate_deploy_workflow_runs_as_one_persisted_job(
    client: httpx.Client, adapters: dict[str, str]
) -> None:
    body = {
        "merge": {"adapters": [ADAPTER_NAME, "second-bot"], "method": "linear", "name": "blend"},
        "validate": {"mode": "quick"},
        "deploy": {"target": "blended", "strategy": "replace", "force": True},
        "wait": True,
    }
    r = client.post("/api/adapters/workflows", json=body, timeout=900)
    assert r.status_code == 200, r.text
    wf = r.json()
    assert wf["status"] == "completed", wf
    assert [s["step"] for s in wf["steps"]] == ["merge", "validate", "deploy"]
    assert all(s["status"] == "completed" for s in wf["steps"])
    merged = client.get("/api/adapters/blend").json()
    assert merged["source"] == "merge" and merged["latest_validation"]["mode"] == "quick"
    assert 0 <= merged["latest_validation"]["score"] <= 100
    listed = client.get("/api/adapters/workflows").json()["workflows"]
    assert wf["id"] in [w["id"] for w in listed]
    # The deployed merge is a real adapter: it answers like itself, not like the base.
    blended = answer(client, "blended")
    assert blended == answer(client, "blend") != answer(client, "base")

    bad = client.post(
        "/api/adapters/workflows",
        json={"merge": {"adapters": [ADAPTER_NAME], "method": "slerp"}},
    )
    assert bad.status_code == 422 and "slerp" in bad.json()["detail"]
    ended = client.post(f"/api/adapters/workflows/{wf['id']}/cancel")
    assert ended.status_code == 409
