"""What the replicas can serve: an adapter is refused with every reason that applies, and
the shared folder is seen by the replicas at REMOTE_ADAPTER_ROOT."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loraflow.adapters.registry import AdapterRecord
from loraflow.config import Settings
from loraflow.errors import InvalidInput
from loraflow.services.manage import fleet


def record(**changes: Any) -> AdapterRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": "a1",
        "name": "bot",
        "version": 3,
        "type": "lora",
        "base_model": "Qwen/Qwen2.5-1.5B-Instruct",
        "path": "/nowhere",
        "description": "",
        "dataset": None,
        "metrics": {},
        "file_size_mb": 1.0,
        "checksum_sha256": "0" * 64,
        "tags": [],
        "rank": 16,
        "alpha": 32.0,
        "target_modules": ["q_proj", "v_proj"],
        "source": "test",
        "status": "active",
        "created_at": now,
        "updated_at": now,
    }
    return AdapterRecord(**{**fields, **changes})


def runtime(tmp_path: Path, **settings: Any) -> Any:
    base = {"LORAFLOW_DATA_DIR": str(tmp_path), "OPENAI_MODEL": "Qwen/Qwen2.5-1.5B-Instruct"}
    return SimpleNamespace(settings=Settings(**{**base, **settings}))


def test_an_adapter_within_the_limits_passes(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    fleet.check_limits(rt, record())
    # The base model matches by its last path part: a local copy of the same model.
    fleet.check_limits(rt, record(base_model="/models/Qwen2.5-1.5B-Instruct/"))
    assert fleet.served_name(record().ref) == "bot@v3"


def test_every_broken_limit_is_named(tmp_path: Path) -> None:
    rt = runtime(tmp_path, REMOTE_MAX_LORA_RANK=8)
    bad = record(
        rank=32, base_model="meta-llama/Llama-3.2-1B", target_modules=["q_proj", "lm_head"]
    )
    with pytest.raises(InvalidInput) as caught:
        fleet.check_limits(rt, bad)
    message = str(caught.value)
    assert "rank 32 is above the replicas' max LoRA rank 8" in message
    assert "'meta-llama/Llama-3.2-1B'" in message and "OPENAI_MODEL" in message
    assert "['lm_head']" in message and "REMOTE_LORA_MODULES" in message


def test_the_shared_folder_as_the_replicas_see_it(tmp_path: Path) -> None:
    here = runtime(tmp_path).settings
    assert here.remote_adapter_path == tmp_path.resolve() / "remote_adapters"
    assert here.remote_adapter_mount == str(here.remote_adapter_path)
    mounted = runtime(tmp_path, REMOTE_ADAPTER_ROOT="/mnt/adapters/").settings
    assert mounted.remote_adapter_mount == "/mnt/adapters"


def test_deploying_to_the_remote_engine_needs_the_openai_backend(tmp_path: Path) -> None:
    rt = SimpleNamespace(settings=runtime(tmp_path).settings, remote=object())
    with pytest.raises(InvalidInput, match="REMOTE_BACKEND=openai"):
        fleet.fleet(rt)
    with pytest.raises(InvalidInput, match=r"engine 'gpu' is not one of \['local', 'remote'\]"):
        fleet.check_engine("gpu")
    assert fleet.check_engine(None) == "local"
