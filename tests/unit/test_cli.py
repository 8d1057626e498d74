"""The CLI as a user runs it: config-check verdicts, ingest, documents, bad flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow.cli import app

runner = CliRunner()


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_cache: Path) -> Path:
    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAFLOW_DATA_DIR", str(data))
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("BASE_MODEL_NAME", raising=False)
    monkeypatch.delenv("USE_LORA_DEFAULT", raising=False)
    return data


def test_help_lists_the_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("serve", "config-check", "ingest", "documents", "ask"):
        assert cmd in r.output


def test_config_check_fails_with_a_reason_for_a_missing_model(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASE_MODEL_NAME", "Org/NotDownloaded")
    r = runner.invoke(app, ["config-check"])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "base model" in r.output
    assert "models--Org--NotDownloaded" in r.output
    assert "BASE_MODEL_NAME" in r.output  # every setting is printed


def test_config_check_passes_on_defaults_with_ollama_down(env: Path, smollm2_dir: Path) -> None:
    r = runner.invoke(app, ["config-check"])
    assert r.exit_code == 0, r.output
    assert "warn" in r.output and "ollama" in r.output
    assert "configuration OK" in r.output


def test_config_check_fails_when_ollama_is_the_default_and_down(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USE_LORA_DEFAULT", "false")
    r = runner.invoke(app, ["config-check"])
    assert r.exit_code == 1
    assert "unreachable" in r.output.lower()


def test_ingest_list_delete(env: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\nAlpha is the first letter.")
    (docs / "b.txt").write_text("Beta is the second letter.")
    (docs / "bad.json").write_text("{not json")
    r = runner.invoke(app, ["ingest", str(docs)])
    assert r.exit_code == 0, r.output
    assert "added" in r.output and "a.md" in r.output and "b.txt" in r.output
    assert "failed" in r.output and "bad.json" in r.output
    doc_id = re.search(r"a\.md \(\d+ chunks, id (\w+)\)", r.output.replace("\n", " ")).group(1)
    r = runner.invoke(app, ["ingest", str(docs / "a.md")])
    assert "unchanged" in r.output
    r = runner.invoke(app, ["documents", "list"])
    assert "a.md" in r.output and "b.txt" in r.output
    r = runner.invoke(app, ["documents", "delete", doc_id])
    assert r.exit_code == 0 and "deleted a.md" in r.output
    r = runner.invoke(app, ["documents", "delete", doc_id])
    assert r.exit_code == 1 and "error" in r.output


def test_ingest_of_a_missing_path_fails_clearly(env: Path) -> None:
    r = runner.invoke(app, ["ingest", "/nonexistent/file.txt"])
    assert r.exit_code != 0
    assert "/nonexistent/file.txt" in r.output


def test_bad_use_lora_value_is_a_usage_error(env: Path) -> None:
    r = runner.invoke(app, ["serve", "--use-lora", "maybe"])
    assert r.exit_code == 2
    assert "maybe" in r.output


def test_inference_answers_with_the_base_and_an_adapter(
    env: Path, monkeypatch: pytest.MonkeyPatch, smollm2_dir: Path
) -> None:
    from tests.e2e.conftest import make_adapter

    make_adapter(smollm2_dir, env / "lora_adapters" / "tuned")
    # A damaged adapter beside it: only the adapter asked for is loaded, so it never matters.
    broken = env / "lora_adapters" / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    args = ["inference", "Name a colour.", "--max-new-tokens", "6", "--temperature", "0"]
    base = runner.invoke(app, args)
    assert base.exit_code == 0, base.output
    assert "model: base" in base.output and "broken" not in base.output
    tuned = runner.invoke(app, [*args, "--adapter", "tuned"])
    assert tuned.exit_code == 0, tuned.output
    assert "model: tuned, engine: transformers" in tuned.output
    text = [r.stdout.split("\n")[0] for r in (base, tuned)]
    assert text[0].strip() and text[0] != text[1]  # the adapter changes the greedy answer
    missing = runner.invoke(app, [*args, "--adapter", "nope"])
    assert missing.exit_code == 1 and "'tuned'" in missing.output


@pytest.mark.integration
def test_inference_uses_the_configured_local_engine(
    env: Path, monkeypatch: pytest.MonkeyPatch, smollm2_dir: Path
) -> None:
    pytest.importorskip("llama_cpp")
    from tests.e2e.conftest import make_adapter

    make_adapter(smollm2_dir, env / "lora_adapters" / "tuned")
    monkeypatch.setenv("LOCAL_ENGINE", "llamacpp")
    monkeypatch.setenv("LLAMACPP_THREADS", "1")
    args = ["inference", "Name a colour.", "--max-new-tokens", "6", "--temperature", "0"]
    base = runner.invoke(app, args)
    assert base.exit_code == 0, base.output
    assert "model: base, engine: llamacpp" in base.output
    tuned = runner.invoke(app, [*args, "--adapter", "tuned"])  # converted to GGUF on first use
    assert tuned.exit_code == 0, tuned.output
    assert "model: tuned, engine: llamacpp" in tuned.output
    text = [r.stdout.split("\n")[0] for r in (base, tuned)]
    assert text[0].strip() and text[0] != text[1]
    # hybrid says which of its engines answered: a short lone prompt goes to llama.cpp.
    monkeypatch.setenv("LOCAL_ENGINE", "hybrid")
    monkeypatch.setenv("LOCAL_PRECISION", "fp32")
    hybrid = runner.invoke(app, args)
    assert hybrid.exit_code == 0, hybrid.output
    assert "model: base, engine: hybrid (llama.cpp)" in hybrid.output


def test_status_reports_queued_jobs_and_a_missing_server(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraflow import db
    from loraflow.training.jobs import create_job
    from tests.e2e.server import free_port

    monkeypatch.setenv("API_PORT", str(free_port()))  # nothing listens there
    engine = db.make_engine(f"sqlite:///{env / 'loraflow.db'}")
    create_job(
        engine,
        task_name="novel-style",
        base_model="bundled:smollm2",
        dataset_file="d.json",
        dataset_type="alpaca",
        output_path="x",
        training_params={},
    )
    from datetime import UTC, datetime

    with engine.begin() as conn:
        conn.execute(
            db.deployments.insert().values(
                target="prod",
                strategy="canary",
                version=3,
                state={
                    "strategy": "canary",
                    "variants": [
                        {"name": "stable", "adapter": "a@v1", "weight": 90.0},
                        {"name": "canary", "adapter": "a@v2", "weight": 10.0},
                    ],
                },
                updated_at=datetime.now(UTC),
            )
        )
    engine.dispose()
    r = runner.invoke(app, ["status"])
    assert r.exit_code == 0, r.output
    assert "not answering" in r.output
    assert "pending 1" in r.output and "queued   #1 novel-style" in r.output
    assert "deployed prod (canary, v3): a@v1 90%, a@v2 10%" in r.output


def test_a_locked_database_is_a_clear_error_not_a_traceback(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3
    import sys

    from loraflow.cli import main

    first = runner.invoke(app, ["memory", "create", "harbour"])
    assert first.exit_code == 0, first.output
    monkeypatch.setenv("DB_BUSY_TIMEOUT", "1")
    monkeypatch.setattr(sys, "argv", ["loraflow", "memory", "create", "lighthouse"])
    # Another process (a long backup, a sqlite3 shell) holds the write lock.
    holder = sqlite3.connect(env / "loraflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert exited.value.code == 3
    out = capsys.readouterr().err
    assert "the database is busy" in out and "DB_BUSY_TIMEOUT=1s" in out
    assert "Traceback" not in out
    # Once the lock is gone the same command works.
    again = runner.invoke(app, ["memory", "create", "lighthouse"])
    assert again.exit_code == 0, again.output
