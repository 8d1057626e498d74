"""Every setting is read from the environment name .env.example documents, in any case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from loraflow.config import Settings
from loraflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED = re.findall(r"^([A-Z][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), flags=re.M)
# A value no setting accepts unchanged as its default: read, it either shows up in the
# setting or is refused naming the variable.
MARK = "zz-unlikely-value-9"
# Names that differ from their field's (the seed's names).
RENAMED = {"LORAFLOW_DATA_DIR": "data_dir", "BATCH_SIZE": "max_batch_size"}


def _field_of(env: str) -> str:
    return RENAMED.get(env, env.lower())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, field in Settings.model_fields.items():
        for env in [*getattr(field.validation_alias, "choices", []), name, name.upper()]:
            monkeypatch.delenv(str(env), raising=False)
            monkeypatch.delenv(str(env).lower(), raising=False)
    monkeypatch.chdir(tmp_path)


def test_every_documented_name_is_a_setting_and_back() -> None:
    assert sorted(_field_of(e) for e in DOCUMENTED) == sorted(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        names = [str(c) for c in field.validation_alias.choices]  # type: ignore[union-attr]
        assert names[0] in DOCUMENTED and name in names, (name, names)


@pytest.mark.parametrize("case", ["upper", "lower"])
@pytest.mark.parametrize("env", [*DOCUMENTED, "BATCH_SIZE"])
def test_each_setting_is_read_from_its_env_name_in_either_case(
    env: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _field_of(env)
    variable = env if case == "upper" else env.lower()
    monkeypatch.setenv(variable, MARK)
    try:
        value = getattr(Settings(), name)
    except ValidationError as exc:
        # Refused under the setting's environment name (MAX_BATCH_SIZE for BATCH_SIZE).
        names = Settings.model_fields[name].validation_alias.choices  # type: ignore[union-attr]
        assert {str(e["loc"][0]) for e in exc.errors()} == {str(names[0])}, exc
        return
    except (SettingsError, ConfigError) as exc:  # a list that is not JSON; a checked value
        assert name in str(exc) or env in str(exc), exc
        return
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    assert MARK in str(value).lower(), (name, value)
