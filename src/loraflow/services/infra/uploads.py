"""Uploaded files: stored under generated names inside the data dir, within the size limit."""

from __future__ import annotations

import re
import unicodedata
import uuid
from pathlib import Path
from typing import BinaryIO

from loraflow.config import Settings
from loraflow.errors import InvalidInput, TooLarge, UnsupportedFile
from loraflow.rag.loaders import SUPPORTED_SUFFIXES

_COPY_BLOCK = 1024 * 1024


def safe_filename(name: str) -> str:
    """A display name with no path parts or control characters (never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*')
    base = base.strip().lstrip(".")
    return base[:200] or "upload"


def save_upload(settings: Settings, filename: str, stream: BinaryIO) -> tuple[Path, str]:
    """Store an upload under a generated name inside the data dir, enforcing the size limit."""
    display = safe_filename(filename)
    suffix = Path(display).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFile(
            f"{display!r} has type {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    limit = settings.max_upload_bytes
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}{suffix}"
    target = settings.uploads_dir / name
    # Written under a staging name and renamed when whole, so a backup or a reader taking
    # the folder meanwhile never sees half an upload.
    partial = settings.uploads_dir / f".tmp-{name}.partial"
    written = 0
    try:
        with open(partial, "wb") as out:
            while block := stream.read(_COPY_BLOCK):
                written += len(block)
                if written > limit:
                    raise TooLarge(
                        f"{display!r} is over the upload limit of {settings.max_upload_mb:g} MB",
                        hint="raise MAX_UPLOAD_MB or split the file",
                    )
                out.write(block)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if written == 0:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{display!r} is empty")
    partial.replace(target)
    return target, display
