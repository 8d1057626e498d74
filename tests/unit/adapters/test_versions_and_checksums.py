"""Registry hardening: version numbers are never reused, checksums are read once per change."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import delete
from typer.testing import CliRunner

from loraflow import db
from loraflow.adapters import checksums, inspect
from loraflow.adapters.registry import Registry
from loraflow.cli import app
from loraflow.errors import InvalidInput
from tests.unit.models.tiny import build_tiny_model, make_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("versions-models")
    base = build_tiny_model(root / "base", smollm2_dir, hidden=32)
    return make_adapter(base, root / "adapter", seed=1)


@pytest.fixture()
def registry(db_url: str) -> Registry:
    return Registry(db.make_engine(db_url), max_rank=64)


def _copy(src: Path, dest: Path) -> Path:
    return shutil.copytree(src, dest)


def test_a_forgotten_top_version_is_never_given_again(
    registry: Registry, adapter_dir: Path, tmp_path: Path
) -> None:
    v1 = registry.register(_copy(adapter_dir, tmp_path / "v1"), name="helper")
    v2 = registry.register(_copy(adapter_dir, tmp_path / "v2"), name="helper")
    registry.remove(v2.ref)
    v3 = registry.register(_copy(adapter_dir, tmp_path / "v3"), name="helper")
    # helper@v2 meant other files once; a client pinned to it must not get v3's files.
    assert (v1.version, v3.version) == (1, 3)
    assert registry.find("helper@v2") is None

    registry.remove(v1.ref)
    registry.remove(v3.ref)
    again = registry.register(_copy(adapter_dir, tmp_path / "v4"), name="helper")
    assert again.version == 4  # even when every version was forgotten
    other = registry.register(_copy(adapter_dir, tmp_path / "o1"), name="other")
    assert other.version == 1  # numbering is per name


def test_a_database_from_before_the_high_water_mark_keeps_counting(
    registry: Registry, adapter_dir: Path, tmp_path: Path
) -> None:
    registry.register(_copy(adapter_dir, tmp_path / "v1"), name="old")
    registry.register(_copy(adapter_dir, tmp_path / "v2"), name="old")
    # An older database has rows but no adapter_versions table entries.
    with registry.db.begin() as conn:
        conn.execute(delete(db.adapter_versions))
    assert registry.register(_copy(adapter_dir, tmp_path / "v3"), name="old").version == 3


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file the checksum code reads in full (the real reading still happens)."""
    reads: list[Path] = []
    real = checksums._feed

    def counting(digest: object, path: Path) -> None:
        reads.append(Path(path))
        real(digest, path)

    monkeypatch.setattr(checksums, "_feed", counting)
    return reads


def test_unchanged_files_are_hashed_once_and_any_change_is_seen(
    registry: Registry, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(adapter_dir, tmp_path / "served")
    reads = _count_reads(monkeypatch)
    rec = registry.register(folder, name="served")
    assert len(reads) == 2  # config and weights
    # Files written in the last seconds are hashed every time (a second write could share
    # their timestamp); once they have settled they are read once more, then never again.
    time.sleep(checksums._RACY_NS / 1e9 + 0.1)
    registry.verify(rec.ref)
    assert len(reads) == 4
    for _ in range(3):  # start-up scans, deploy checks, GET /api/adapters/{name}
        registry.verify(rec.ref)
        registry.scan([tmp_path])
        inspect.inspect_adapter(folder)
    assert len(reads) == 4

    # `verify --fresh` always reads every byte again.
    registry.verify(rec.ref, fresh=True)
    assert len(reads) == 6

    # Same size, and the old modification time put back: still caught, and refused.
    _flip_last_byte_keeping_mtime(folder / "adapter_model.safetensors")
    with pytest.raises(InvalidInput, match="does not match its registered checksum"):
        registry.verify(rec.ref)
    assert len(reads) == 8


def test_sha256_file_matches_hashlib_and_follows_changes(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "blob.bin"
    f.write_bytes(b"first")
    assert checksums.sha256_file(f) == hashlib.sha256(b"first").hexdigest()
    f.write_bytes(b"other")
    assert checksums.sha256_file(f) == hashlib.sha256(b"other").hexdigest()
    assert checksums.sha256_file(f, fresh=True) == hashlib.sha256(b"other").hexdigest()


def _flip_last_byte_keeping_mtime(path: Path) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_cli_show_verify_reads_the_files_again(adapter_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = _copy(adapter_dir, data / "lora_adapters" / "checked")
    env = {"BASE_MODEL_NAME": str(adapter_dir.parent / "base")}
    where = ["--data-dir", str(data)]
    runner = CliRunner()
    added = runner.invoke(app, ["adapters", "register", str(folder), *where], env=env)
    assert added.exit_code == 0, added.output
    ok = runner.invoke(app, ["adapters", "show", "checked", "--verify", *where], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["status"] == "ok"

    _flip_last_byte_keeping_mtime(folder / "adapter_model.safetensors")
    bad = runner.invoke(app, ["adapters", "show", "checked", "--verify", *where], env=env)
    assert bad.exit_code != 0
    assert "does not match its registered checksum" in " ".join(bad.output.split())
