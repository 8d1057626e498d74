"""Story memory: projects, entries (with versions), activation preview, suggestions,
continuity check, story text, export and import."""

from __future__ import annotations

from typing import Any

from fastapi import Body, Query
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import memory as S
from loraflow.memory.entries import KINDS
from loraflow.services.write import memory

router = json_router(prefix="/api/memory", tags=["story memory"])


class ProjectCreate(BaseModel):
    name: str = Field(..., description="Any language, 1-128 characters, no slashes.")
    description: str = ""


class ProjectUpdate(BaseModel):
    name: str | None = None
    description: str | None = None


class EntryCreate(BaseModel):
    kind: str = Field(..., description=f"One of {', '.join(KINDS)}.")
    title: str
    content: str
    keywords: list[str] = Field(
        default_factory=list,
        description="Trigger words; Chinese ones match as substrings; /regex/ for patterns.",
    )
    importance: int = Field(5, description="1-10; higher wins when the budget is tight.")
    always_on: bool = False
    chapter: int | None = Field(None, description="Chapter where the fact became true.")
    position: int | None = Field(None, description="Position within the chapter.")


class EntryChange(BaseModel):
    kind: str | None = None
    title: str | None = None
    content: str | None = None
    keywords: list[str] | None = None
    importance: int | None = None
    always_on: bool | None = None
    chapter: int | None = None
    position: int | None = None


class SupersedeBody(EntryChange):
    note: str | None = Field(None, description="Why the fact changed (e.g. 'dies in ch. 9').")


class TextBody(BaseModel):
    text: str
    memory_budget: int | None = Field(None, ge=0, description="Override MEMORY_TOKEN_BUDGET.")


@router.get("/projects", response_model=S.ProjectList, summary="List story projects")
def list_projects(rt: RuntimeDep) -> dict[str, Any]:
    items = memory.list_projects(rt)
    return {"projects": items, "count": len(items)}


@router.post(
    "/projects", response_model=S.ProjectInfo, status_code=201, summary="Create a story project"
)
def create_project(body: ProjectCreate, rt: RuntimeDep) -> dict[str, Any]:
    return memory.create_project(rt, body.name, body.description)


@router.get(
    "/projects/{project}",
    response_model=S.ProjectInfo,
    summary="One project (by id or name) with counts",
)
def get_project(project: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.project_info(rt, project)


@router.patch(
    "/projects/{project}",
    response_model=S.ProjectInfo,
    summary="Rename a project or change its description",
)
def update_project(project: str, body: ProjectUpdate, rt: RuntimeDep) -> dict[str, Any]:
    return memory.update_project(rt, project, body.name, body.description)


@router.delete(
    "/projects/{project}",
    response_model=S.Project,
    summary="Delete a project with its memory and story",
)
def delete_project(project: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.delete_project(rt, project)


@router.get(
    "/projects/{project}/entries", response_model=S.EntryList, summary="List memory entries"
)
def list_entries(
    project: str,
    rt: RuntimeDep,
    kind: str | None = None,
    history: bool = Query(False, description="Include superseded versions."),
) -> dict[str, Any]:
    items = memory.list_entries(rt, project, kind, history)
    return {"entries": items, "count": len(items)}


@router.post(
    "/projects/{project}/entries",
    response_model=S.MemoryEntry,
    status_code=201,
    summary="Add a memory entry",
)
def add_entry(project: str, body: EntryCreate, rt: RuntimeDep) -> dict[str, Any]:
    return memory.add_entry(rt, project, body.model_dump())


@router.get(
    "/projects/{project}/entries/{entry_id}",
    response_model=S.MemoryEntryWithHistory,
    summary="An entry with its history",
)
def get_entry(project: str, entry_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.get_entry(rt, project, entry_id)


@router.patch(
    "/projects/{project}/entries/{entry_id}",
    response_model=S.MemoryEntry,
    summary="Correct an entry in place",
)
def update_entry(project: str, entry_id: str, body: EntryChange, rt: RuntimeDep) -> dict[str, Any]:
    return memory.update_entry(rt, project, entry_id, body.model_dump(exclude_unset=True))


@router.post(
    "/projects/{project}/entries/{entry_id}/supersede",
    response_model=S.MemoryEntryWithHistory,
    summary="Record a changed fact: a new version; only it is injected from now on",
)
def supersede_entry(
    project: str, entry_id: str, body: SupersedeBody, rt: RuntimeDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    note = changes.pop("note", None)
    return memory.supersede_entry(rt, project, entry_id, changes, note)


@router.delete(
    "/projects/{project}/entries/{entry_id}",
    response_model=S.MemoryEntry,
    summary="Delete an entry and history",
)
def delete_entry(project: str, entry_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.delete_entry(rt, project, entry_id)


@router.post(
    "/projects/{project}/activate",
    response_model=S.ActivationPreview,
    response_model_exclude_unset=True,
    summary="Which entries a generation would use",
)
def activate(project: str, body: TextBody, rt: RuntimeDep) -> dict[str, Any]:
    return memory.preview_activation(rt, project, body.text, body.memory_budget)


@router.get(
    "/projects/{project}/suggestions",
    response_model=S.SuggestionList,
    summary="List memory suggestions",
)
def list_suggestions(
    project: str, rt: RuntimeDep, status: str | None = Query(None, description="pending...")
) -> dict[str, Any]:
    items = memory.list_suggestions(rt, project, status)
    return {"suggestions": items, "count": len(items)}


@router.post(
    "/projects/{project}/suggestions",
    response_model=S.SuggestionList,
    summary="Extract suggestions from a text",
)
def extract_suggestions(project: str, body: TextBody, rt: RuntimeDep) -> dict[str, Any]:
    items = memory.extract_suggestions(rt, project, body.text)
    return {"suggestions": items, "count": len(items)}


@router.post(
    "/projects/{project}/suggestions/{sid}/accept",
    response_model=S.AcceptedSuggestion,
    status_code=201,
    summary="Accept a suggestion (optionally edited) as a memory entry",
)
def accept_suggestion(
    project: str, sid: str, rt: RuntimeDep, body: EntryChange | None = None
) -> dict[str, Any]:
    overrides = body.model_dump(exclude_unset=True) if body else {}
    return memory.accept_suggestion(rt, project, sid, overrides)


@router.post(
    "/projects/{project}/suggestions/{sid}/reject",
    response_model=S.Suggestion,
    summary="Reject a suggestion",
)
def reject_suggestion(project: str, sid: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.reject_suggestion(rt, project, sid)


@router.post(
    "/projects/{project}/continuity",
    response_model=S.ContinuityReport,
    summary="Flag text that contradicts memory",
)
def continuity(project: str, body: TextBody, rt: RuntimeDep) -> dict[str, Any]:
    flags = memory.check_continuity(rt, project, body.text)
    return {"flags": flags, "count": len(flags)}


@router.get(
    "/projects/{project}/story",
    response_model=S.Story,
    summary="The project's story text and passages",
)
def get_story(project: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.get_story(rt, project)


@router.delete(
    "/projects/{project}/story",
    response_model=S.DeletedStory,
    summary="Clear the story text (memory stays)",
)
def delete_story(project: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.delete_story(rt, project)


@router.get(
    "/projects/{project}/export",
    response_model=S.ProjectExport,
    summary="The project's memory as JSON",
)
def export_project(project: str, rt: RuntimeDep) -> dict[str, Any]:
    return memory.export_project(rt, project)


@router.post(
    "/import",
    response_model=S.ProjectInfo,
    status_code=201,
    summary="Create a project from an export",
)
def import_project(
    rt: RuntimeDep,
    document: dict[str, Any] = Body(..., description="A document from .../export."),
    name: str | None = Query(None, description="Project name; default the exported one."),
) -> dict[str, Any]:
    return memory.import_project(rt, document, name)
