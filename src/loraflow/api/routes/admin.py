"""Admin routes: create, list, download and verify backups of this instance."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import admin as S
from loraflow.errors import InvalidInput, NotFound
from loraflow.services.ops.backup import create_backup, verify_backup

router = json_router(prefix="/api/admin", tags=["admin"])


def _backups_dir(rt: Any) -> Path:
    return rt.settings.data_path / "backups"


def _named(rt: Any, name: str) -> Path:
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".tar.gz"):
        raise InvalidInput(f"{name!r} is not a backup name (expected NAME.tar.gz)")
    path = _backups_dir(rt) / name
    if not path.is_file():
        known = sorted(p.name for p in _backups_dir(rt).glob("*.tar.gz"))
        raise NotFound(f"no backup named {name!r}; known: {', '.join(known) or 'none'}")
    return path


@router.post(
    "/backup",
    response_model=S.BackupReport,
    summary="Write a consistent backup archive under DATA_DIR/backups",
    description="Waits for a running ingest or delete of any knowledge base (in any worker) "
    "to finish and holds off new ones while it takes its snapshot, not while it writes the "
    "archive. 507 when the disk is full; no partial archive is left.",
)
async def backup(rt: RuntimeDep) -> dict[str, Any]:
    report = await run_in_threadpool(create_backup, rt.settings, rt.db)
    body = asdict(report)
    body["path"] = str(report.path)
    body["name"] = report.path.name
    return body


@router.get("/backups", response_model=S.BackupList, summary="List backup archives")
def list_backups(rt: RuntimeDep) -> dict[str, Any]:
    items = [
        {"name": p.name, "bytes": p.stat().st_size}
        for p in sorted(_backups_dir(rt).glob("*.tar.gz"))
    ]
    return {"backups": items, "count": len(items)}


@router.get(
    "/backups/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "The archive."}},
    summary="Download a backup archive",
)
def download_backup(name: str, rt: RuntimeDep) -> FileResponse:
    path = _named(rt, name)
    return FileResponse(path, media_type="application/gzip", filename=path.name)


@router.post(
    "/backups/{name}/verify",
    response_model=S.BackupCheck,
    summary="Verify every checksum of a backup archive",
)
def verify(name: str, rt: RuntimeDep) -> dict[str, Any]:
    manifest = verify_backup(_named(rt, name))
    return {"ok": True, "members": len(manifest["members"]), "created_at": manifest["created_at"]}
