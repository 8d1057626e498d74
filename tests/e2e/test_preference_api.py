"""Preference tuning through the HTTP API of a real server: preference uploads are checked,
a DPO job runs on the job queue, reports rewards per step and held-out accuracy, and its
adapter is registered with its method."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_training_api import API, Instance, upload, wait_for
from tests.unit.training.preference_data import FACTS

pytestmark = pytest.mark.integration

PAIRS = [{"prompt": q, "chosen": a.upper(), "rejected": a} for q, a in FACTS[:8]]


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[httpx.Client]:
    inst = Instance(tmp_path_factory.mktemp("pref-server"), model_cache)
    try:
        with inst.start() as c:
            yield c
    finally:
        inst.stop()


@pytest.mark.parametrize(
    ("rows", "kind", "expected"),
    [
        ([{"prompt": "Q?", "chosen": "A."}], "preference", "line 1: missing field 'rejected'"),
        (
            [{"prompt": "Q?", "completion": "A.", "label": "yes"}],
            "kto",
            "line 1: field 'label' must be true or false",
        ),
        ([{"prompt": "Q?", "chosen": "A.", "rejected": "B."}], "alpaca", "preference"),
    ],
)
def test_bad_preference_uploads_are_explained(
    client: httpx.Client, rows: list, kind: str, expected: str
) -> None:
    r = upload(client, "prefs.jsonl", _jsonl(rows), kind)
    assert r.status_code == 422, r.text
    assert expected in r.json()["detail"] and "prefs.jsonl" in r.json()["detail"]


def test_a_method_needs_its_kind_of_dataset(client: httpx.Client) -> None:
    sft = upload(client, "sft.json", json.dumps([{"instruction": "a", "output": "b"}]).encode())
    form = {
        "task_name": "mismatch",
        "base_model": "bundled:smollm2",
        "dataset_filename": sft.json()["filename"],
        "dataset_type": "alpaca",
        "method": "dpo",
    }
    r = client.post(f"{API}/train", data=form)
    assert r.status_code == 422 and "method='dpo' trains on preference" in r.json()["detail"]


def test_dpo_job_runs_on_the_queue_and_registers_its_adapter(client: httpx.Client) -> None:
    up = upload(client, "pairs.jsonl", _jsonl(PAIRS), "preference")
    assert up.status_code == 200, up.text
    assert "8 preference examples" in up.json()["message"]
    form = {
        "task_name": "caps-dpo",
        "base_model": "bundled:smollm2",
        "dataset_filename": up.json()["filename"],
        "dataset_type": "preference",
        "method": "dpo",
        "beta": "0.2",
        "training_params": json.dumps(
            {"batch_size": 2, "grad_accum": 1, "max_len": 64, "max_steps": 3, "val_split": 0.25}
        ),
    }
    r = client.post(f"{API}/train", data=form)
    assert r.status_code == 200, r.text
    task = client.get(f"{API}/tasks/{r.json()['task_id']}").json()
    assert task["training_params"]["method"] == "dpo"
    assert task["training_params"]["beta"] == 0.2
    done = wait_for(client, task["task_id"], lambda t: t["status"] in ("completed", "failed"), 400)
    assert done["status"] == "completed", done
    assert "held-out preference accuracy" in done["message"]
    metrics = client.get(f"{API}/tasks/{task['task_id']}/metrics").json()
    assert len(metrics["loss"]) == 3
    assert all("margin" in h and "rewards_chosen" in h for h in metrics["loss"])
    acc = metrics["preference_accuracy"]
    assert acc["held_out_pairs"] == 2 and 0 <= acc["before"] <= 1 and 0 <= acc["after"] <= 1
    adapters = client.get("/api/adapters").json()["adapters"]
    found = next(a for a in adapters if a["name"] == "caps-dpo")
    assert found["performance_metrics"]["preference_accuracy_after"] == acc["after"]
    meta = json.loads((Path(found["adapter_path"]) / "loraflow.json").read_text())
    assert meta["method"] == "dpo" and meta["method_params"] == {
        "beta": 0.2,
        "loss_type": "sigmoid",
    }
    # A registered adapter can be continued; an unknown one is refused at submit.
    form["training_params"] = json.dumps({"max_steps": 1, "init_adapter": "no-such-adapter"})
    form["task_name"] = "caps-dpo-more"
    r = client.post(f"{API}/train", data=form)
    assert r.status_code == 404 and "no-such-adapter" in r.json()["detail"]
    form["training_params"] = json.dumps({"max_steps": 1, "init_adapter": "caps-dpo"})
    r = client.post(f"{API}/train", data=form)
    assert r.status_code == 200, r.text
    more = client.post(f"{API}/tasks/{r.json()['task_id']}/cancel").json()
    assert more["training_params"]["init_adapter"] == "caps-dpo"
    assert "init_adapter_path" not in more["training_params"]
