"""Container files: lint-clean, and every variable they set is a real loraflow setting."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraflow.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
# Variables for Python, pip and libraries, not loraflow settings.
FOREIGN = {
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "DEBIAN_FRONTEND",
    "HF_HUB_OFFLINE",
    "GRADIO_ANALYTICS_ENABLED",
}


def setting_names() -> set[str]:
    return {str(f.validation_alias.choices[0]) for f in Settings.model_fields.values()}


def dockerfile_env(path: Path) -> set[str]:
    text = path.read_text().replace("\\\n", " ")
    names: set[str] = set()
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    return names


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_sets_only_known_settings(name: str) -> None:
    env = dockerfile_env(REPO / name) - FOREIGN
    assert env, "the image should configure loraflow through settings"
    assert env <= setting_names(), f"unknown settings in {name}: {env - setting_names()}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_real_extras_with_the_llamacpp_engine(name: str) -> None:
    import tomllib

    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    asked = re.findall(r"LORAFLOW_EXTRAS=([\w,]+)", (REPO / name).read_text())
    assert asked, f"{name} should install loraflow through scripts/setup.sh with its extras"
    for spec in asked:
        assert set(spec.split(",")) <= extras, f"{name} asks for unknown extras: {spec}"
        assert "llamacpp" in spec.split(","), "LOCAL_ENGINE=llamacpp must work in the image"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is installed with the dev extra on linux x86_64 only")
    proc = subprocess.run([hadolint, str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_wires_services_by_known_settings() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    app = services["loraflow"]
    env = app["environment"]
    assert set(env) <= setting_names(), set(env) - setting_names()
    for dep in app.get("depends_on", {}):
        assert dep in services
    # Every URL the app is given points at a service of this compose file.
    for key, value in env.items():
        if isinstance(value, str) and "://" in value and not value.startswith("sqlite"):
            host = re.split(r"[/:@]", value.split("://", 1)[1].split("@")[-1])[0]
            assert host in services, f"{key} points at {host!r}, not a compose service"


def commented_lines(service: str) -> list[str]:
    """Commented lines of a compose service: its optional arguments and settings."""
    text = (REPO / "compose.yaml").read_text()
    block = re.split(r"^  [a-z]", text.split(f"\n  {service}:\n", 1)[1], flags=re.M)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("#")]


def commented_env(service: str) -> dict[str, str]:
    """`# NAME: value` lines of a compose service: the documented optional settings."""
    pairs = (re.match(r"#\s*([A-Z][A-Z0-9_]*):\s*(.+)$", ln) for ln in commented_lines(service))
    return {m.group(1): m.group(2) for m in pairs if m}


def test_compose_optional_settings_are_real_and_point_at_its_services() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    env = commented_env("loraflow")
    assert {"REMOTE_BACKEND", "OPENAI_BASE_URL", "VECTOR_STORE", "QDRANT_URL"} <= set(env)
    assert set(env) <= setting_names(), set(env) - setting_names()
    assert Settings(REMOTE_BACKEND=env["REMOTE_BACKEND"]).remote_backend == "openai"
    for key in ("OPENAI_BASE_URL", "QDRANT_URL"):
        host = env[key].split("://", 1)[1].split(":")[0]
        assert host in services, f"{key} points at {host!r}, not a compose service"
    # A secret is never written into the file.
    assert not env["OPENAI_API_KEY"].startswith("sk-")


def test_compose_vllm_service_serves_lora_on_a_gpu() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    vllm = compose["services"]["vllm"]
    image, tag = vllm["image"].split(":")
    assert image == "vllm/vllm-openai" and tag not in ("", "latest")
    assert vllm["profiles"] == ["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    args = vllm["command"]
    assert "--enable-lora" in args
    assert int(args[args.index("--max-loras") + 1]) >= 2, "blue and green side by side"
    # loraflow loads deployed adapters on it at run time.
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    shared = Settings(LORAFLOW_DATA_DIR="/data").remote_adapter_mount
    assert shared == "/data/remote_adapters" and "loraflow-data:/data:ro" in vllm["volumes"]
    rank = int(args[args.index("--max-lora-rank") + 1])
    assert rank >= Settings().max_lora_rank, "vLLM would refuse adapters the registry accepts"
    # Port 8000 of that service is where OPENAI_BASE_URL points.
    assert commented_env("loraflow")["OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    assert any("--lora-modules" in line for line in commented_lines("vllm"))
    volumes = {v.split(":")[0] for v in vllm["volumes"]}
    assert volumes <= set(compose["volumes"]) and "loraflow-data" in volumes
