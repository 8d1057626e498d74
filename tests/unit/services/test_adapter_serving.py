"""On-demand adapter serving on a tiny real model: the MAX_LOADED_ADAPTERS bound and its LRU."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loraflow import db
from loraflow.config import Settings
from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import HFEngine
from loraflow.errors import InvalidInput
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model
from loraflow.services.catalog.selection import known_adapters
from loraflow.services.infra.adapter_cache import AttachedAdapters
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.registry import attach, lora_records
from loraflow.services.runtime import Runtime, build_runtime
from loraflow.services.serve.lora_serving import load_lora, unload_lora
from tests.unit.models.tiny import build_tiny_model, make_adapter

MESSAGES = [{"role": "user", "content": "Tell me about adapters."}]
GREEDY = GenerationParams(max_new_tokens=10, temperature=0)
NAMES = ("alpha", "beta", "gamma")
LONG_CONTEXT = 16384


def _engine(model_dir: Path, cache: Path) -> HFEngine:
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(model_dir), cache))
    return HFEngine(model, tokenizer, base_model_name="tiny-llama")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-models")
    # A long context, so one answer can keep decoding for as long as a test needs it to.
    base = build_tiny_model(root / "base", smollm2_dir, context=LONG_CONTEXT)
    out = {"base": base}
    for seed, name in enumerate(NAMES, start=1):
        out[name] = make_adapter(base, root / "adapters" / name, seed=seed)
    return out


@pytest.fixture(scope="module")
def reference(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each adapter's greedy answer from an engine that only ever held that adapter."""
    out = {}
    for name in NAMES:
        engine = _engine(tiny["base"], tmp_path_factory.mktemp("ref-cache"))
        engine.load_adapter(name, tiny[name])
        out[name] = engine.generate(MESSAGES, GREEDY, adapter=name).text
    assert len(set(out.values())) == 3, "the adapters must answer differently"
    return out


@pytest.fixture()
def rt(tiny: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    """A runtime whose local engine may keep 2 adapters, with the 3 adapters registered."""
    settings = Settings(data_dir=tmp_path / "data", load_local_model=False, max_loaded_adapters=2)
    runtime = build_runtime(settings, load_local=False)
    runtime.local = _engine(tiny["base"], tmp_path / "cache")
    reg = adapter_svc.registry(runtime)
    for name in NAMES:
        reg.register(tiny[name], name=name)
    yield runtime
    runtime.local.close()
    runtime.db.dispose()


def _ask(rt: Runtime, name: str) -> str:
    served = attach.ensure_served(rt, name)
    assert rt.local is not None
    return rt.local.generate(MESSAGES, GREEDY, adapter=served).text


def test_three_adapters_in_turn_keep_two_attached_and_all_answer(
    rt: Runtime, reference: dict[str, str]
) -> None:
    assert rt.local is not None
    for _ in range(2):
        for name in NAMES:
            assert _ask(rt, name) == reference[name], name
            assert len(rt.local.adapters()) <= 2
    assert sorted(rt.local.adapters()) == ["beta", "gamma"]


def test_the_least_recently_used_adapter_goes_first(rt: Runtime, reference: dict[str, str]) -> None:
    assert rt.local is not None
    _ask(rt, "alpha")
    _ask(rt, "beta")
    assert _ask(rt, "alpha") == reference["alpha"]  # alpha used again: beta is now the oldest
    _ask(rt, "gamma")
    assert sorted(rt.local.adapters()) == ["alpha", "gamma"]


def test_deployed_and_explicitly_loaded_adapters_stay(
    rt: Runtime, tiny: dict[str, Path], reference: dict[str, str]
) -> None:
    assert rt.local is not None
    variants = [{"name": "stable", "adapter": "alpha@v1", "weight": 100.0}]
    with rt.db.begin() as conn:
        conn.execute(
            db.deployments.insert().values(
                target="production",
                strategy="replace",
                state={"strategy": "replace", "variants": variants},
                previous=None,
                version=1,
                updated_at=datetime.now(UTC),
            )
        )
    for name in NAMES:
        _ask(rt, name)
    # alpha is deployed, so beta (the oldest not deployed) made room for gamma.
    assert sorted(rt.local.adapters()) == ["alpha", "gamma"]

    # A folder loaded by name (vLLM's /v1/load_lora_adapter) is never detached to make room.
    unload_lora(rt, "gamma")
    pinned = shutil.copytree(tiny["gamma"], rt.settings.lora_path / "pinned")
    load_lora(rt, "pinned", "pinned")  # relative: a folder under LORA_MODEL_PATH
    assert rt.local.adapter_paths()["pinned"] == pinned.resolve()
    assert _ask(rt, "beta") == reference["beta"]
    assert "pinned" in rt.local.adapters() and "alpha" in rt.local.adapters()
    assert len(rt.local.adapters()) == 3  # over the bound: a warning, never a refusal


def test_an_adapter_a_request_is_decoding_with_is_not_detached(
    rt: Runtime, reference: dict[str, str]
) -> None:
    engine = rt.local
    assert engine is not None
    engine.enable_batching(4)
    served = attach.ensure_served(rt, "alpha")
    # An answer far longer than the rest of the test takes: thousands of decode steps, while
    # the two asks below need a few dozen.
    long = GenerationParams(max_new_tokens=LONG_CONTEXT - 100, temperature=0, ignore_eos=True)
    stream = engine.stream(MESSAGES, long, adapter=served)
    first = next(iter(stream))  # alpha is now in the running batch
    _ask(rt, "beta")
    assert _ask(rt, "gamma") == reference["gamma"]
    # alpha is the least recently used, but busy: beta went instead.
    assert sorted(engine.adapters()) == ["alpha", "gamma"]
    more = [next(iter(stream)) for _ in range(5)]  # still decoding, with its adapter attached
    assert stream.finish_reason is None and first + "".join(more)
    stream.close()


def test_an_adapter_handed_to_a_request_on_its_way_is_not_detached(
    rt: Runtime, reference: dict[str, str]
) -> None:
    """Between ensure_served and the engine (prompt building, retrieval) nothing holds the
    adapter in a batch yet: it is still kept until the request arrives."""
    engine = rt.local
    assert engine is not None
    engine.enable_batching(4)
    served = attach.ensure_served(rt, "alpha")  # the request is still building its prompt
    _ask(rt, "beta")
    assert _ask(rt, "gamma") == reference["gamma"]
    # alpha is the least recently used, but a request was handed it: beta went instead.
    assert sorted(engine.adapters()) == ["alpha", "gamma"]
    # The request arrives and finishes with the adapter it was given.
    assert engine.generate(MESSAGES, GREEDY, adapter=served).text == reference["alpha"]
    # Done with it: alpha is an ordinary least-recently-used adapter again.
    _ask(rt, "gamma")
    _ask(rt, "beta")
    assert sorted(engine.adapters()) == ["beta", "gamma"]


def _worker_beside(rt: Runtime, base: Path, cache: Path) -> Runtime:
    """Another server worker: the same database and data dir, an engine of its own."""
    return dataclasses.replace(
        rt,
        local=_engine(base, cache),
        serve_lock=threading.Lock(),
        attached=AttachedAdapters(),
        lora_tokens={},
    )


def _says(rt: Runtime, name: str) -> str:
    assert rt.local is not None and name in known_adapters(rt)
    return rt.local.generate(MESSAGES, GREEDY, adapter=name).text


def test_loads_by_name_reach_the_other_workers_and_a_restart(
    rt: Runtime, tiny: dict[str, Path], reference: dict[str, str], tmp_path: Path
) -> None:
    """/v1/load_lora_adapter through one worker: the others attach, swap and drop it too."""
    other = _worker_beside(rt, tiny["base"], tmp_path / "other-cache")
    for name in ("alpha", "beta"):
        shutil.copytree(tiny[name], rt.settings.lora_path / name)
    load_lora(rt, "hot", "alpha")
    assert _says(other, "hot") == reference["alpha"]
    load_lora(rt, "hot", "beta", replace=True)  # swapped in place through the first worker
    assert _says(other, "hot") == reference["beta"]
    with pytest.raises(InvalidInput, match="already loaded"):
        load_lora(other, "hot", "alpha")  # taken on every worker, not only where it was loaded
    unload_lora(other, "hot")
    assert "hot" not in known_adapters(rt)

    # A worker started later (or after a restart) attaches what is recorded, not what was.
    load_lora(other, "warm", "alpha")
    late = _worker_beside(rt, tiny["base"], tmp_path / "late-cache")
    try:
        assert _says(late, "warm") == reference["alpha"]
        assert "hot" not in known_adapters(late)
    finally:
        for worker in (other, late):
            assert worker.local is not None
            worker.local.close()


def test_a_bad_record_is_skipped_without_failing_requests(
    rt: Runtime, tiny: dict[str, Path], reference: dict[str, str], tmp_path: Path
) -> None:
    """A recorded folder outside this configuration's roots, or gone, is not attached."""
    shutil.copytree(tiny["alpha"], rt.settings.lora_path / "alpha")
    load_lora(rt, "good", "alpha")
    # Records another configuration left (a restored data dir, another LORA_MODEL_PATH).
    outside = tmp_path / "elsewhere" / "alpha"
    shutil.copytree(tiny["alpha"], outside)
    db.set_state(rt.db, lora_records.PREFIX + "foreign", {"path": str(outside), "token": "t1"})
    gone = rt.settings.lora_path / "gone"
    db.set_state(rt.db, lora_records.PREFIX + "vanished", {"path": str(gone), "token": "t2"})
    other = _worker_beside(rt, tiny["base"], tmp_path / "other-cache")
    try:
        names = known_adapters(other)  # every request that names models syncs first
        assert "foreign" not in names and "vanished" not in names
        assert _says(other, "good") == reference["alpha"]
        # Tried once, not on every request.
        assert other.lora_tokens["foreign"] == "t1" and other.lora_tokens["vanished"] == "t2"
    finally:
        assert other.local is not None
        other.local.close()


def test_a_load_the_database_cannot_record_is_undone(
    rt: Runtime, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Another process holds the database: the load fails and leaves nothing attached."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    shutil.copytree(tiny["alpha"], rt.settings.lora_path / "alpha")
    impatient = dataclasses.replace(rt, db=db.make_engine(rt.settings.db_url, busy_timeout=0.5))
    holder = sqlite3.connect(rt.settings.data_path / "loraflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OperationalError, match="locked"):
            load_lora(impatient, "unrecorded", "alpha")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        impatient.db.dispose()
    assert rt.local is not None and "unrecorded" not in rt.local.adapters()
    assert "unrecorded" not in known_adapters(rt)


def test_a_fresh_install_reports_its_missing_adapter_and_remote_engine_as_optional(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    from loraflow.services.ops.health import health
    from tests.e2e.server import free_port

    settings = Settings(
        data_dir=tmp_path / "data",
        load_local_model=False,
        ollama_base_url=f"http://127.0.0.1:{free_port()}",
        ollama_timeout=3,
    )
    runtime = build_runtime(settings, load_local=False)
    runtime.local = _engine(tiny["base"], tmp_path / "cache")
    try:
        h = health(runtime)
        assert h["components"]["lora_model"] is False
        assert h["components"]["ollama_service"] is False
        optional = h["details"]["optional"]
        assert "the base model answers now" in optional["lora_model"]
        assert "Ollama is not running" in optional["ollama_service"]
        # Switched to the remote engine, Ollama is needed: no longer optional.
        remote_first = settings.model_copy(update={"use_lora_default": False})
        h = health(dataclasses.replace(runtime, settings=remote_first))
        assert h["details"]["model_info"]["engine"] in ("ollama", "remote")
        assert h["details"]["optional"] == {}
    finally:
        runtime.local.close()
        runtime.db.dispose()
