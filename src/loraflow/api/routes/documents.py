"""Knowledge-base documents: upload, list, delete."""

from __future__ import annotations

from typing import Any

from fastapi import File, UploadFile

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import knowledge as S
from loraflow.services.know import documents

router = json_router(prefix="/documents", tags=["documents"])


@router.post(
    "",
    response_model=S.IngestReport,
    summary="Upload .txt/.md/.pdf/.json/.jsonl files and ingest them",
)
def upload(rt: RuntimeDep, files: list[UploadFile] = File(...)) -> dict[str, Any]:
    report = documents.ingest_uploads(rt, ((f.filename or "", f.file) for f in files))
    return documents.report_dict(report)


@router.get("", response_model=S.DocumentList, summary="List ingested documents")
def list_docs(rt: RuntimeDep) -> dict[str, Any]:
    docs = documents.list_documents(rt)
    return {"documents": docs, "count": len(docs)}


@router.delete(
    "/{doc_id}", response_model=S.DeletedDocument, summary="Delete a document and its chunks"
)
def delete_doc(doc_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return {"deleted": documents.delete_document(rt, doc_id)}
