"""Deploying onto a fleet for real: two loraflow servers stand in for vLLM replicas (they serve
vLLM's run-time LoRA API) over one shared adapter folder, and a third loraflow, with no local
model, is the gateway that places, loads, checks, routes and retires adapters on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import make_adapter
from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Name a colour."}]
# Lenient on purpose: on a busy 2-core machine latency alone must not roll a canary back.
LENIENT = {"force": True, "engine": "remote", "max_latency_ratio": 100.0}


@dataclass
class Fleet:
    gateway: Server
    replicas: list[Server]
    root: Path
    replica_env: dict[str, str]
    gateway_env: dict[str, str]
    stopped: list[Server] = field(default_factory=list)


def _replica(data: Path, env: dict[str, str], port: int | None = None) -> Server:
    port = port or free_port()
    return Server(data, env, cli_argv("serve", "--port", str(port)), port)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_dir: Path,
    model_cache: Path,
    stopped_port: int,
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("shared-adapters")
    base = str(smollm2_dir)  # the model id replicas list, and the adapters' recorded base
    common = {
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "ENABLE_UI": "false",
        "AUTO_INGEST_SAMPLE": "false",
        "MAX_NEW_TOKENS": "4",
        "TEMPERATURE": "0",
        # Three servers share the cores: one thread each keeps them from fighting.
        "OMP_NUM_THREADS": "1",
    }
    replica_env = {**common, "BASE_MODEL_NAME": base, "LORA_MODEL_PATH": str(root)}
    replicas = [_replica(tmp_path_factory.mktemp(f"replica{i}"), replica_env) for i in (0, 1)]
    gateway_dir = tmp_path_factory.mktemp("gateway")
    versions = gateway_dir / "versions"
    for seed in (0, 1, 2):
        make_adapter(smollm2_dir, versions / f"bot-{seed + 1}", seed=seed)
    make_adapter(smollm2_dir, versions / "big", seed=3, rank=32)
    gw_port = free_port()
    gateway_env = {
        **common,
        "LOAD_LOCAL_MODEL": "false",
        "USE_LORA_DEFAULT": "false",
        "REMOTE_BACKEND": "openai",
        "OPENAI_BASE_URLS": ",".join(f"{r.url}/v1" for r in replicas),
        "OPENAI_MODEL": base,
        "OPENAI_TIMEOUT": "120",
        "REMOTE_ADAPTER_DIR": str(root),
        "REMOTE_MAX_LORA_RANK": "16",
        "FLEET_POLL_SECONDS": "1",
        "FLEET_EJECT_SECONDS": "2",
        "DEPLOY_HEALTH_RETRIES": "2",
    }
    gateway = Server(gateway_dir, gateway_env, cli_argv("serve", "--port", str(gw_port)), gw_port)
    f = Fleet(gateway, replicas, root, replica_env, gateway_env)
    try:
        for r in replicas:
            r.wait_ready()
        gateway.wait_ready()
        with httpx.Client(base_url=gateway.url, timeout=120) as c:
            for folder in ("bot-1", "bot-2", "bot-3", "big"):
                name = "big" if folder == "big" else "bot"
                r = c.post(
                    "/api/adapters/register", json={"path": str(versions / folder), "name": name}
                )
                assert r.status_code == 201, r.text
        yield f
    finally:
        f.gateway.stop()
        for r in [*f.replicas, *f.stopped]:
            r.stop()


@pytest.fixture(scope="module")
def gw(fleet: Fleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.gateway.url, timeout=300) as c:
        yield c


def chat(client: httpx.Client, model: str) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 4, "temperature": 0}
    return client.post("/v1/chat/completions", json=body)


def answer(client: httpx.Client, model: str) -> str:
    r = chat(client, model)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def listed(replica: Server) -> set[str]:
    data = httpx.get(f"{replica.url}/v1/models", timeout=30).json()["data"]
    return {m["id"] for m in data if "@" in m["id"]}


def deploy(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/api/adapters/deploy", json={**LENIENT, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


class Load:
    """Requests to `model` from a few threads until stopped; every status kept."""

    def __init__(self, url: str, model: str, workers: int = 2) -> None:
        self.url, self.model = url, model
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers)
        self._futures = [self._pool.submit(self._run) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as c:
            while not self._stop.is_set():
                r = chat(c, self.model)
                self.statuses.append(r.status_code)
                if r.status_code != 200:
                    self.errors.append(r.text)

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 300
        while len(self.statuses) < n and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> list[int]:
        self._stop.set()
        for fut in self._futures:
            fut.result()
        self._pool.shutdown()
        return self.statuses


def test_a_remote_deploy_loads_the_version_on_every_replica_and_routes_to_it(
    fleet: Fleet, gw: httpx.Client
) -> None:
    done = deploy(gw, target="bot-prod", adapter="bot@v1")
    assert done["state"]["engine"] == "remote"
    health = next(s for s in done["steps"] if s["step"] == "health_check")
    assert health["ok"] and [r["replica"] for r in health["replicas"]] == [
        f"{r.url}/v1" for r in fleet.replicas
    ]
    # The files are in the shared folder once, under the version; both replicas serve them.
    assert (fleet.root / "bot" / "v1" / "adapter_model.safetensors").is_file()
    assert [listed(r) for r in fleet.replicas] == [{"bot@v1"}, {"bot@v1"}]
    # Every front door routes the target to the variant's served name on a replica.
    direct = httpx.post(
        f"{fleet.replicas[0].url}/v1/chat/completions",
        json={"model": "bot@v1", "messages": PROMPT, "max_tokens": 4, "temperature": 0},
        timeout=300,
    ).json()["choices"][0]["message"]["content"]
    assert answer(gw, "bot-prod") == direct
    ollama = gw.post(
        "/api/chat",
        json={
            "model": "bot-prod",
            "messages": PROMPT,
            "stream": False,
            "options": {"num_predict": 4, "temperature": 0},
        },
    )
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["message"]["content"] == direct
    asked = gw.post(
        "/ask",
        json={"query": "Name a colour.", "adapter": "bot-prod", "max_new_tokens": 4},
    )
    assert asked.status_code == 200, asked.text
    assert (asked.json()["engine"], asked.json()["adapter"]) == ("openai", "bot@v1")
    live = gw.get("/api/adapters/deployments/bot-prod").json()["live"]
    assert live["stable"]["requests"] >= 2 and live["stable"]["errors"] == 0


def test_an_adapter_above_the_replicas_limits_is_refused_and_leaves_nothing(
    fleet: Fleet, gw: httpx.Client
) -> None:
    r = gw.post("/api/adapters/deploy", json={**LENIENT, "target": "big-prod", "adapter": "big"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "rank 32" in detail and "REMOTE_MAX_LORA_RANK" in detail
    assert not (fleet.root / "big").exists()
    assert all("big@v1" not in listed(rep) for rep in fleet.replicas)
    assert gw.get("/api/adapters/deployments/big-prod").status_code == 404


def test_blue_green_under_concurrent_load_fails_no_request(fleet: Fleet, gw: httpx.Client) -> None:
    before = answer(gw, "bot-prod")
    load = Load(fleet.gateway.url, "bot-prod")
    try:
        load.wait_for(4)
        done = deploy(gw, target="bot-prod", adapter="bot@v2", strategy="blue_green")
        seen = len(load.statuses)
        load.wait_for(seen + 4)  # traffic after the switch too
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}, load.errors[:3]
    state = done["state"]
    assert state["variants"][0]["adapter"] == "bot@v2"
    assert state["standby"]["adapter"] == "bot@v1"
    # The standby colour stays loaded for an instant switch back.
    assert [listed(r) for r in fleet.replicas] == [{"bot@v1", "bot@v2"}] * 2
    assert answer(gw, "bot-prod") != before


def test_a_canary_steps_up_and_promote_unloads_what_it_retires(
    fleet: Fleet, gw: httpx.Client
) -> None:
    deploy(
        gw,
        target="bot-prod",
        adapter="bot@v3",
        strategy="canary",
        schedule=[50, 75],
        step_requests=3,
        min_requests=100,
    )
    # The blue-green standby is no longer used by anything: unloaded everywhere.
    assert [listed(r) for r in fleet.replicas] == [{"bot@v2", "bot@v3"}] * 2
    for _ in range(30):
        assert chat(gw, "bot-prod").status_code == 200
        state = gw.get("/api/adapters/deployments/bot-prod").json()["state"]
        if state.get("step") == 1:
            break
    assert [v["weight"] for v in state["variants"]] == [25.0, 75.0]
    events = gw.get("/api/adapters/deployments/bot-prod/history").json()["events"]
    # The numbers per variant that made the step: the canary's share, no errors, a p95.
    live = next(e for e in events if e["action"] == "canary_step")["detail"]["live"]
    assert live["canary"]["requests"] >= 3 and live["canary"]["errors"] == 0
    assert live["stable"]["errors"] == 0 and live["canary"]["latency_p95_s"] is not None
    # Promoted under load: bot@v2 is unloaded only once the answers it was giving are done,
    # and a request routed to it just before the switch is answered by bot@v3.
    load = Load(fleet.gateway.url, "bot-prod", workers=3)
    try:
        load.wait_for(3)
        r = gw.post("/api/adapters/deployments/bot-prod/promote", json={})
        seen = len(load.statuses)
        load.wait_for(seen + 3)
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}, load.errors[:3]
    assert r.status_code == 200, r.text
    promoted = r.json()
    assert promoted["state"]["variants"] == [
        {"name": "stable", "adapter": "bot@v3", "weight": 100.0}
    ]
    assert [listed(r) for r in fleet.replicas] == [{"bot@v3"}] * 2
    assert answer(gw, "bot-prod")


def _replica_state(gw: httpx.Client, url: str) -> dict[str, Any]:
    replicas = gw.get("/health").json()["details"]["replicas"]
    return dict(next(r for r in replicas if r["url"] == f"{url}/v1"))


def test_a_killed_replica_loses_no_traffic_and_gets_its_adapters_back_before_traffic(
    fleet: Fleet, gw: httpx.Client, tmp_path: Path
) -> None:
    victim = fleet.replicas[0]
    load = Load(fleet.gateway.url, "bot-prod")
    try:
        load.wait_for(4)
        victim.proc.kill()  # mid-load: requests in flight there fail before any answer
        victim.stop()
        fleet.stopped.append(victim)
        seen = len(load.statuses)
        load.wait_for(seen + 6)
        assert _replica_state(gw, victim.url)["healthy"] is False
        # Back on the same address, restarted with nothing loaded (as vLLM restarts).
        revived = _replica(tmp_path / "revived", fleet.replica_env, victim.port)
        revived.wait_ready()
        fleet.replicas[0] = revived
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if listed(revived) == {"bot@v3"} and _replica_state(gw, revived.url)["healthy"]:
                break
            time.sleep(0.5)
        assert listed(revived) == {"bot@v3"}
        seen = len(load.statuses)
        load.wait_for(seen + 8)
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}, load.errors[:3]
    state = _replica_state(gw, revived.url)
    assert state["healthy"] and state["missing_adapters"] == []
    # It takes its share again once it serves the adapter.
    metrics = httpx.get(f"{revived.url}/metrics", timeout=30).text
    assert "bot@v3" in metrics


def test_a_restarted_gateway_reconciles_the_fleet_with_its_deployments(
    fleet: Fleet, gw: httpx.Client, tmp_path: Path
) -> None:
    fleet.gateway.stop()
    # Meanwhile a replica restarts and loses its run-time adapters.
    old = fleet.replicas[1]
    old.stop()
    fleet.stopped.append(old)
    fresh = _replica(tmp_path / "fresh", fleet.replica_env, old.port)
    fresh.wait_ready()
    fleet.replicas[1] = fresh
    assert listed(fresh) == set()
    g = fleet.gateway
    argv = cli_argv("serve", "--port", str(g.port))
    fleet.gateway = Server(g.data_dir, fleet.gateway_env, argv, g.port)
    fleet.gateway.wait_ready()
    deadline = time.monotonic() + 60
    while listed(fresh) != {"bot@v3"} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert listed(fresh) == {"bot@v3"}
    assert answer(gw, "bot-prod")


def test_an_ab_split_on_the_fleet_counts_each_variant_within_bounds(
    fleet: Fleet, gw: httpx.Client
) -> None:
    """Last: loads two more versions on the replicas."""
    deploy(gw, target="ab-fleet", adapter="bot@v1")
    done = deploy(gw, target="ab-fleet", adapter="bot@v2", strategy="ab", split=[70, 30])
    assert [(v["name"], v["weight"]) for v in done["state"]["variants"]] == [
        ("A", 70.0),
        ("B", 30.0),
    ]
    assert all({"bot@v1", "bot@v2"} <= listed(r) for r in fleet.replicas)
    n = 60
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda _: chat(gw, "ab-fleet").status_code, range(n)))
    assert set(codes) == {200}
    live = gw.get("/api/adapters/deployments/ab-fleet").json()["live"]
    assert live["A"]["requests"] + live["B"]["requests"] == n
    # 30% of 60 = 18, binomial sd ~3.5: 3.7 sd either side (a split that ignored the
    # weights and sent everything to one variant lands outside).
    assert 5 <= live["B"]["requests"] <= 31, live
    assert live["A"]["errors"] == live["B"]["errors"] == 0


def test_a_canary_whose_replicas_answer_errors_is_rolled_back_automatically(
    fleet: Fleet, gw: httpx.Client
) -> None:
    """Last: damages a version's files in the shared folder."""
    deploy(gw, target="fragile", adapter="bot@v3")
    deploy(
        gw,
        target="fragile",
        adapter="bot@v2",
        strategy="canary",
        percent=50,
        step_requests=10000,
    )
    # The canary's shared files are damaged and every replica drops its loaded copy (as a
    # restart would): the replicas cannot serve it again, and the live numbers must say so.
    weights = fleet.root / "bot" / "v2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for r in fleet.replicas:
        httpx.post(f"{r.url}/v1/unload_lora_adapter", json={"lora_name": "bot@v2"}, timeout=60)
    failures = 0
    for _ in range(150):
        if chat(gw, "fragile").status_code != 200:
            failures += 1
        if gw.get("/api/adapters/deployments/fragile").json()["strategy"] == "replace":
            break
    final = gw.get("/api/adapters/deployments/fragile").json()
    assert [v["adapter"] for v in final["state"]["variants"]] == ["bot@v3"], (failures, final)
    assert failures >= 1
    event = gw.get("/api/adapters/deployments/fragile/history").json()["events"][0]
    assert event["action"] == "rollback" and event["status"] == "auto"
    assert "error rate" in event["detail"]["reason"]
    # The stable version still answers through every replica.
    assert answer(gw, "fragile")
