"""One error hierarchy for the whole package; the API and CLI map these to responses."""

from __future__ import annotations

import errno


class LoraflowError(Exception):
    """Base class: a problem the user can act on, with a plain-words message."""

    http_status = 400
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(LoraflowError):
    """A setting has a value that cannot work."""

    exit_code = 2


class InvalidInput(LoraflowError):
    """A request or file that cannot be processed as given."""

    http_status = 422


class NotFound(LoraflowError):
    """A named thing (adapter, document, model) does not exist."""

    http_status = 404


class UnsupportedFile(LoraflowError):
    """An uploaded or ingested file has a type or content loraflow cannot read."""

    http_status = 415


class TooLarge(LoraflowError):
    """A body, upload or file is over the configured limit."""

    http_status = 413


class ModelLoadError(LoraflowError):
    """A base model, adapter or embedding model could not be loaded."""

    http_status = 503
    exit_code = 3


class EngineUnavailable(LoraflowError):
    """A generation backend cannot be reached or is not loaded."""

    http_status = 503
    exit_code = 3


class StoreError(LoraflowError):
    """The vector store on disk is missing, damaged or incompatible."""

    http_status = 500
    exit_code = 4


class DiskFull(StoreError):
    """A write failed because the disk (or a quota, or a file-size limit) is full."""

    http_status = 507


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def from_os_error(exc: BaseException) -> LoraflowError | None:
    """The user's error behind an OS error caused by a name they gave, else None."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return InvalidInput(
            "a file or folder name in the request is too long for the file system "
            "(at most 255 bytes a name)"
        )
    return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is an OS error for a full disk, quota or file-size limit."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class Conflict(LoraflowError):
    """A name is taken, or a change would break something that depends on it."""

    http_status = 409
