"""Backups."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BackupReport(BaseModel):
    path: str
    files: int
    tables: dict[str, int] = Field(description="Rows saved per database table.")
    bytes: int
    seconds: float
    name: str = Field(description="The archive's name under DATA_DIR/backups.")


class BackupFile(BaseModel):
    name: str
    bytes: int


class BackupList(BaseModel):
    backups: list[BackupFile]
    count: int


class BackupCheck(BaseModel):
    ok: bool
    members: int = Field(description="Files checked against the manifest.")
    created_at: str
