"""Written models and adapters are readable by other users: files 0644, folders 0755."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from loraflow.permissions import share_tree


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_safetensors_and_mkdtemp_output_becomes_shared(tmp_path: Path, umask_022: None) -> None:
    import torch
    from safetensors.torch import save_file

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "sub" / "adapter_model.safetensors"))
    (folder / "sub" / "link").symlink_to("adapter_model.safetensors")
    assert _mode(folder) == 0o700  # what mkdtemp gives
    share_tree(folder)
    assert _mode(folder) == 0o755 and _mode(folder / "sub") == 0o755
    assert _mode(folder / "sub" / "adapter_model.safetensors") == 0o644
    share_tree(tmp_path / "missing")  # nothing to do, no error


def test_a_private_umask_is_respected(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    old = os.umask(0o077)
    try:
        share_tree(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o600 and _mode(tmp_path) == 0o700
