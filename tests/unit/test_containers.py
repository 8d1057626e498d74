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
