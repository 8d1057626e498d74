"""The service lock: who starts a data dir first, and a restore holding servers off."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loraflow.errors import ConfigError
from loraflow.locks import data_dir_unused, service_lock


def test_the_first_server_on_a_data_dir_knows_it_and_later_ones_do_not(tmp_path: Path) -> None:
    with service_lock(tmp_path) as first:
        assert first is True
        # A worker started (or restarted) beside a running one.
        with service_lock(tmp_path) as second:
            assert second is False
    # Everyone stopped: the next start is a fresh one again.
    with service_lock(tmp_path) as again:
        assert again is True


def test_a_server_does_not_start_on_a_data_dir_being_restored(tmp_path: Path) -> None:
    held, release = threading.Event(), threading.Event()

    def restore() -> None:
        with data_dir_unused(tmp_path):
            held.set()
            release.wait(30)

    t = threading.Thread(target=restore)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(ConfigError, match="being restored"), service_lock(tmp_path):
            pass
    finally:
        release.set()
        t.join()
    with service_lock(tmp_path) as first:
        assert first is True
