"""Integration on a merged model: register, merge (+ lock), validate, deploy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraflow import db
from loraflow.config import Settings
from loraflow.locks import file_lock
from loraflow.services.manage import workflows
from loraflow.services.train.jobs import TrainingContext
from tests.unit.test_export import FakeOllama, OllamaHandler, build_adapter, build_tiny_llama


class FilesHandler(OllamaHandler):
    """Ollama's create from uploaded safetensors files (`files`), checking every blob."""

    def do_POST(self) -> None:
        if self.path != "/api/create":
            return super().do_POST()
        request = json.loads(self._body())
        self.server.created.append(request)
        missing = [d for d in request.get("files", {}).values() if d not in self.server.blobs]
        if missing or "files" not in request:
            return self._reply(400, {"error": f"missing blobs {missing}"})
        self.server.models.add(request["model"])
        return self._reply(200, {"status": "success"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    data = tmp_path_factory.mktemp("integrate")
    base = build_tiny_llama(data / "tiny-base", smollm2_dir)
    adapter = build_adapter(base, data / "lora_adapters" / "style")
    return {"data": data, "base": base, "adapter": adapter}


@pytest.fixture()
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    server.RequestHandlerClass = FilesHandler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _ctx(data: Path, **settings: Any) -> TrainingContext:
    s = Settings(data_dir=data, load_local_model=False, **settings)
    return TrainingContext(settings=s, db=db.make_engine(s.db_url))


def _spec(tiny: dict[str, Path], out: Path, **deploy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "adapter_path": str(tiny["adapter"]),
        "adapter_name": "style",
        "adapter_type": "writing",
        "base_model_path": str(tiny["base"]),
        "merge": {"strategy": "linear", "output_path": str(out)},
        "validate": {"mode": "quick"},
    }
    if deploy:
        spec["deploy"] = deploy
    return spec


def test_workflow_merges_validates_and_deploys_to_ollama(
    tiny: dict[str, Path], ollama: FakeOllama
) -> None:
    ctx = _ctx(tiny["data"], ollama_base_url=ollama.url)
    out = tiny["data"] / "merged" / "style-full"
    deploy = {"target": "style-full", "serve_with": "ollama", "force": True}
    wf = workflows.create(ctx, "integrate", _spec(tiny, out, **deploy))
    assert [s["step"] for s in wf["steps"]] == [
        "register_adapter",
        "merge_model",
        "validate_model",
        "deploy_model",
    ]
    done = workflows.run(ctx, wf["id"])
    assert done["status"] == "completed", done["error"]
    assert (out / "config.json").is_file() and (out / "loraflow.json").is_file()
    report = done["steps"][2]["detail"]["report"]
    assert set(report["dimensions"]) == {"basic", "domain", "safety", "performance"}
    assert report["dimensions"]["performance"]["score"] is not None  # measured against base
    record = done["result"]["deployment"]
    assert record["deployment_id"].startswith("deploy_")
    assert record["deployed_model_path"] == str(out.resolve())
    assert record["service_endpoints"][0].startswith(ollama.url)
    assert record["deployment_duration_seconds"] >= 0 and record["completion_time"]
    created = ollama.created[-1]
    assert created["model"] == "style-full"
    assert {"config.json", "model.safetensors"} <= set(created["files"])
    # The adapter was registered on the fly, once: a second run reuses its record.
    again = workflows.run(ctx, workflows.create(ctx, "integrate", _spec(tiny, out))["id"])
    assert again["steps"][0]["detail"]["registered"] is False
    assert again["status"] == "failed" and "already exists" in again["error"]


def test_a_merge_into_an_output_being_written_is_refused(tiny: dict[str, Path]) -> None:
    ctx = _ctx(tiny["data"])
    out = tiny["data"] / "merged" / "busy"
    with file_lock(out.parent / f".{out.name}.merge.lock"):
        spec = _spec(tiny, out)
        del spec["validate"]
        done = workflows.run(ctx, workflows.create(ctx, "integrate", spec)["id"])
    assert done["status"] == "failed"
    assert "another merge is writing" in done["error"] and not out.exists()


def test_quantized_merge_is_refused_by_ollama_with_a_reason(
    tiny: dict[str, Path], ollama: FakeOllama
) -> None:
    pytest.importorskip("bitsandbytes")
    ctx = _ctx(tiny["data"], ollama_base_url=ollama.url)
    out = tiny["data"] / "merged" / "style-8bit"
    spec = _spec(tiny, out, target="style-q", serve_with="ollama", force=True)
    spec["merge"] |= {"quantization": True, "quantization_bits": 8}
    del spec["validate"]
    done = workflows.run(ctx, workflows.create(ctx, "integrate", spec)["id"])
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_8bit"]
    assert done["status"] == "failed" and "bitsandbytes-quantized" in done["error"]


def test_seed_options_are_checked_before_anything_runs(tiny: dict[str, Path]) -> None:
    from loraflow.errors import InvalidInput

    ctx = _ctx(tiny["data"])
    bad = _spec(tiny, tiny["data"] / "x")
    bad["merge"]["strategy"] = "slerp"
    with pytest.raises(InvalidInput, match="cannot merge one adapter into its base"):
        workflows.create(ctx, "integrate", bad)
    canary = _spec(tiny, tiny["data"] / "x", target="t", strategy="canary")
    with pytest.raises(InvalidInput, match="canary and A/B split traffic"):
        workflows.create(ctx, "integrate", canary)
