"""Read knowledge-base files (txt, md, pdf, json, jsonl) into plain text."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import NotFound, UnsupportedFile
from loraflow.safe_json import DEFAULT_LIMITS, JsonLimits
from loraflow.safe_json import loads as bounded_loads

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf", ".json", ".jsonl")

# Keys whose values are the body of a record, and keys that title it.
_BODY_KEYS = ("content", "text", "body", "output", "answer")
_HEADING_KEYS = ("title", "instruction", "question")
# Instruction datasets keep the task's context in "input"; it belongs with the heading.
_CONTEXT_KEYS = ("input",)


@dataclass
class LoadedDocument:
    """The text of one file, with its display name and kind (suffix without the dot)."""

    text: str
    source: str
    kind: str


def load_document(
    path: Path, source: str | None = None, limits: JsonLimits = DEFAULT_LIMITS
) -> LoadedDocument:
    """Read one supported file; raise UnsupportedFile when it has no usable text.

    JSON and JSONL files are read within `limits` (nesting depth, element count).
    """
    path = Path(path)
    name = source if source is not None else path.name
    if not path.is_file():
        raise NotFound(f"File {str(path)!r} does not exist or is not a regular file")
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        allowed = ", ".join(SUPPORTED_SUFFIXES)
        raise UnsupportedFile(f"{name!r} has suffix {suffix or '(none)'!r}; supported: {allowed}")
    text = _normalise(reader(path, name, limits))
    if not text.strip():
        raise UnsupportedFile(f"{name!r} contains no text")
    return LoadedDocument(text=text, source=name, kind=suffix.lstrip("."))


def iter_files(paths: list[Path]) -> list[Path]:
    """Expand folders (recursively, sorted, skipping hidden and unsupported files)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise NotFound(f"Path {str(p)!r} does not exist")
        found = [p] if not p.is_dir() else _walk(p)
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _walk(folder: Path) -> list[Path]:
    files = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES:
            files.append(f)
    return files


def _normalise(text: str) -> str:
    # NUL bytes break some tokenizers and JSON consumers; CRs would skew chunk offsets.
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _decode(path: Path, name: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsupportedFile(
            f"{name!r} is not UTF-8 text (invalid byte at offset {exc.start})",
            hint="re-save it as UTF-8",
        ) from exc


def _read_text(path: Path, name: str, limits: JsonLimits) -> str:
    return _decode(path, name)


def _read_pdf(path: Path, name: str, limits: JsonLimits) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedFile(f"{name!r} is an encrypted PDF; remove the password first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnsupportedFile:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        why = f"{type(exc).__name__}: {exc}"
        if "encrypt" in why.lower() or "decrypt" in why.lower():
            raise UnsupportedFile(
                f"{name!r} is an encrypted PDF ({why}); remove the password first"
            ) from exc
        raise UnsupportedFile(f"{name!r} is not a readable PDF ({why})") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise UnsupportedFile(
            f"{name!r} has no extractable text ({len(pages)} page(s))",
            hint="scanned PDFs need OCR first",
        )
    return text


def _read_json(path: Path, name: str, limits: JsonLimits) -> str:
    raw = _decode(path, name)
    try:
        value = bounded_loads(raw, limits, where=repr(name))
    except json.JSONDecodeError as exc:
        raise UnsupportedFile(
            f"{name!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return extract_json_text(value)


def _read_jsonl(path: Path, name: str, limits: JsonLimits) -> str:
    raw = _decode(path, name)
    records = []
    for lineno, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = bounded_loads(line, limits, where=f"{name!r} line {lineno}")
        except json.JSONDecodeError as exc:
            raise UnsupportedFile(
                f"{name!r} line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        text = extract_json_text(value)
        if text.strip():
            records.append(text)
    return "\n\n".join(records)


def extract_json_text(value: Any) -> str:
    """Readable text of a JSON value: record bodies with their headings, else all strings."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        # Records are separated by a blank line so the chunker can split between them.
        sep = "\n\n" if any(isinstance(v, dict) for v in value) else "\n"
        return sep.join(t for t in (extract_json_text(v) for v in value) if t)
    if isinstance(value, dict):
        return _extract_record(value)
    return ""  # numbers, booleans and null carry no prose


def _extract_record(record: dict[str, Any]) -> str:
    bodies = [extract_json_text(record[k]) for k in _BODY_KEYS if k in record]
    if any(bodies):
        heads = [extract_json_text(record[k]) for k in _HEADING_KEYS + _CONTEXT_KEYS if k in record]
        return "\n".join(t for t in heads + bodies if t)
    return "\n".join(t for t in (extract_json_text(v) for v in record.values()) if t)


_READERS: dict[str, Callable[[Path, str, JsonLimits], str]] = {
    ".txt": _read_text,
    ".md": _read_text,
    ".pdf": _read_pdf,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
}
