"""Settings: the seed's variable names, .env files, paths inside the data dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loraflow.config import Settings
from loraflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        alias = Settings.model_fields[name].validation_alias
        for env in getattr(alias, "choices", [name.upper()]):
            monkeypatch.delenv(str(env), raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_seed() -> None:
    s = Settings()
    assert (s.api_host, s.api_port, s.device) == ("127.0.0.1", 8001, "cpu")
    assert (s.max_new_tokens, s.temperature, s.top_p) == (512, 0.7, 0.9)
    assert s.use_lora_default is True and s.enable_quantization is False
    assert s.quantization_type == "int8"


def test_seed_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_MODEL_NAME", "/models/qwen")
    monkeypatch.setenv("USE_LORA_DEFAULT", "false")
    monkeypatch.setenv("DEVICE", "auto")
    monkeypatch.setenv("API_PORT", "9000")
    monkeypatch.setenv("QUANTIZATION_TYPE", "4bit")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = Settings()
    assert s.base_model_name == "/models/qwen" and s.use_lora_default is False
    assert (s.device, s.api_port, s.quantization_type, s.log_level) == (
        "auto",
        9000,
        "4bit",
        "DEBUG",
    )


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_NEW_TOKENS=64\nOLLAMA_BASE_URL=http://h:1/\n")
    s = Settings()
    assert s.max_new_tokens == 64 and s.ollama_base_url == "http://h:1"


def test_relative_paths_resolve_inside_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "inst", lora_model_path=Path("ad"), cache_dir=Path("/abs/c"))
    assert s.lora_path == (tmp_path / "inst" / "ad").resolve()
    assert s.vector_store_dir == (tmp_path / "inst" / "vector_store").resolve()
    assert s.cache_path == Path("/abs/c")
    assert s.db_url == f"sqlite:///{(tmp_path / 'inst' / 'loraflow.db').resolve()}"


def test_bad_values_are_rejected_with_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "tpu")
    with pytest.raises(ValueError, match="DEVICE"):
        Settings()
    monkeypatch.delenv("DEVICE")
    with pytest.raises(ConfigError, match="CHUNK_OVERLAP"):
        Settings(chunk_size=100, chunk_overlap=100).check()


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    expected = {str(f.validation_alias.choices[0]) for f in Settings.model_fields.values()}
    assert documented == expected


def test_env_example_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            monkeypatch.setenv(k, v)
    s = Settings()
    assert s.database_url in (None, "") and s.db_url.startswith("sqlite:///")


def test_api_keys_are_parsed_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.services.ops.checks import settings_rows

    monkeypatch.setenv("API_KEY", " k1 , k2,")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:pw@h/db")
    s = Settings()
    assert s.api_key_list == ["k1", "k2"]
    printed = " ".join(v for _, v in settings_rows(s))
    assert "k1" not in printed and "pw" not in printed
    assert "API_KEY" in {k for k, _ in settings_rows(s)}


def test_training_device_is_auto_and_follows_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().training_device_used == "auto"
    monkeypatch.setenv("DEVICE", "cuda")
    assert Settings().training_device_used == "cuda"
    monkeypatch.setenv("TRAINING_DEVICE", "")
    assert Settings().training_device_used == "cuda"
    monkeypatch.setenv("TRAINING_DEVICE", "cpu")
    assert Settings().training_device_used == "cpu"


def test_seed_tuning_names_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.services.ops.checks import settings_rows

    s = Settings()
    assert (s.max_batch_size, s.enable_fp16, s.cuda_memory_fraction, s.log_level) == (
        16,
        True,
        1.0,
        "INFO",
    )
    monkeypatch.setenv("BATCH_SIZE", "1")
    monkeypatch.setenv("ENABLE_FP16", "false")
    monkeypatch.setenv("CUDA_MEMORY_FRACTION", "0.8")
    monkeypatch.setenv("VERBOSE", "true")
    s = Settings()
    assert (s.max_batch_size, s.enable_fp16, s.cuda_memory_fraction, s.log_level) == (
        1,
        False,
        0.8,
        "DEBUG",
    )
    rows = dict(settings_rows(s))
    assert rows["(seed name) BATCH_SIZE"] == "read as MAX_BATCH_SIZE=1"
    assert rows["(resolved) LOG_LEVEL"] == "DEBUG (VERBOSE=true)"
    assert rows["(resolved) TRAINING_DEVICE"].startswith("auto (")
    monkeypatch.setenv("CUDA_MEMORY_FRACTION", "1.5")
    with pytest.raises(ValueError, match="CUDA_MEMORY_FRACTION"):
        Settings()


def test_python_dash_m_runs_the_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "loraflow", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "config-check" in done.stdout
