"""Modes of the model files loraflow writes: readable by other users, like a plain save.

safetensors (0.8) writes each file through a private temporary file, and `mkdtemp` makes
private folders, so adapters and models came out 0600 in 0700 folders: a serving process
running as another user could not read them. Written files get what `open()` gives under
the process umask (0644 under the usual 022), folders 0755, as PEFT's `save_pretrained`
into a plain folder did.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_tree(root: Path) -> None:
    """Give `root` and everything in it the shared modes (files 0644, folders 0755), umask
    applied; symlinks are left alone."""
    mask = current_umask()
    file_mode, dir_mode = FILE_MODE & ~mask, DIR_MODE & ~mask
    root = Path(root)
    if root.is_symlink() or not root.exists():
        return
    if root.is_file():
        root.chmod(file_mode)
        return
    root.chmod(dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(dir_mode)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(file_mode)
