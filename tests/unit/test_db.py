"""Database: tables created on first use, shared state round-trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow import db
from loraflow.errors import ConfigError


def test_state_round_trip_and_visible_to_a_second_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    a = db.make_engine(url)
    b = db.make_engine(url)  # another worker of the same instance
    assert db.get_state(a, "model_selection", "dflt") == "dflt"
    db.set_state(a, "model_selection", {"engine": "ollama", "adapter": None})
    assert db.get_state(b, "model_selection") == {"engine": "ollama", "adapter": None}
    db.set_state(b, "model_selection", {"engine": "local", "adapter": "x"})
    assert db.get_state(a, "model_selection")["adapter"] == "x"


def test_unusable_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        db.make_engine("nosuchdialect://user:secret@host/db")
    assert "secret" not in str(info.value)
    assert "DATABASE_URL" in str(info.value)


def test_redact_url_hides_the_password() -> None:
    assert db.redact_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert db.redact_url("sqlite:///x.db") == "sqlite:///x.db"
