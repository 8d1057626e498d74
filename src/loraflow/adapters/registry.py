"""The adapter registry: one database row per adapter folder, found by scanning or registered.

An adapter is registered with the checksum of its files; it is verified again before it is
served, so a folder changed after registration is refused instead of silently used. A new
version of a name is a new folder (folders are never rewritten in place), and a version
number is never given twice, even after the newest version was forgotten.
"""

from __future__ import annotations

import builtins
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from loraflow import db
from loraflow.adapters.checksums import checksum
from loraflow.adapters.inspect import AdapterFacts, check_fits, engine_rank, inspect_adapter
from loraflow.errors import Conflict, InvalidInput, LoraflowError, NotFound
from loraflow.models.adapters import discover_adapters, is_adapter_folder

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SOURCES = ("scan", "training", "merge", "registered")


@dataclass
class AdapterRecord:
    """The seed's adapter info record, plus the LoRA facts engines need."""

    id: str
    name: str
    version: int
    type: str
    base_model: str
    path: str
    description: str
    dataset: str | None
    metrics: dict[str, Any]
    file_size_mb: float
    checksum_sha256: str
    tags: list[str]
    rank: int
    alpha: float
    target_modules: list[str]
    source: str
    status: str
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_id"] = self.id
        d["adapter_path"] = self.path
        d["trained_on_dataset"] = self.dataset
        d["performance_metrics"] = self.metrics
        d["engine_max_lora_rank"] = engine_rank(self.rank)
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d


@dataclass
class ScanResult:
    """What a scan found: new rows, rows whose files changed or vanished, and skipped folders."""

    added: list[AdapterRecord] = field(default_factory=list)
    changed: list[AdapterRecord] = field(default_factory=list)
    missing: list[AdapterRecord] = field(default_factory=list)
    unchanged: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [r.to_dict() for r in self.added],
            "changed": [r.to_dict() for r in self.changed],
            "missing": [r.to_dict() for r in self.missing],
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _record(row: Any) -> AdapterRecord:
    m = dict(row._mapping)
    for key in ("created_at", "updated_at"):
        if m[key] is not None and m[key].tzinfo is None:
            m[key] = m[key].replace(tzinfo=UTC)
    return AdapterRecord(**m)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"adapter name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Registry:
    """Adapter rows in the database, and the folders they point to."""

    def __init__(self, engine: Engine, *, max_rank: int = 64, root: Path | None = None) -> None:
        self.db = engine
        self.max_rank = max_rank
        # Folders inside `root` (the data dir) are stored relative to it, so a restored
        # backup in another data dir still finds its adapters.
        self.root = Path(root).resolve() if root is not None else None

    def _stored(self, path: Path) -> str:
        path = Path(path).resolve()
        if self.root is not None and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return str(path)

    def _record(self, row: Any) -> AdapterRecord:
        rec = _record(row)
        if self.root is not None and not Path(rec.path).is_absolute():
            rec.path = str(self.root / rec.path)
        return rec

    # --- reading -------------------------------------------------------------------------
    def list(self, *, name: str | None = None) -> list[AdapterRecord]:
        q = select(db.adapters).order_by(db.adapters.c.name, db.adapters.c.version)
        if name is not None:
            q = q.where(db.adapters.c.name == name)
        with self.db.connect() as conn:
            return [self._record(r) for r in conn.execute(q)]

    def find(self, ref: str) -> AdapterRecord | None:
        """By id, `name@vN`, or name (its newest version)."""
        ref = (ref or "").strip()
        c = db.adapters.c
        with self.db.connect() as conn:
            row = conn.execute(select(db.adapters).where(c.id == ref)).first()
            if row is None and "@v" in ref:
                name, _, ver = ref.rpartition("@v")
                if ver.isdigit():
                    row = conn.execute(
                        select(db.adapters).where(c.name == name, c.version == int(ver))
                    ).first()
            if row is None:
                row = conn.execute(
                    select(db.adapters).where(c.name == ref).order_by(c.version.desc()).limit(1)
                ).first()
        return self._record(row) if row is not None else None

    def get(self, ref: str) -> AdapterRecord:
        found = self.find(ref)
        if found is None:
            names = sorted({r.name for r in self.list()})
            listed = ", ".join(repr(n) for n in names) or "none are registered"
            raise NotFound(
                f"adapter {ref!r} is not registered; registered adapters: {listed}",
                hint="run `loraflow adapters scan` or register the folder",
            )
        return found

    def find_by_path(self, path: Path) -> AdapterRecord | None:
        with self.db.connect() as conn:
            row = conn.execute(
                select(db.adapters).where(db.adapters.c.path == self._stored(Path(path)))
            ).first()
        return self._record(row) if row is not None else None

    # --- writing -------------------------------------------------------------------------
    def register(
        self,
        path: Path,
        *,
        name: str | None = None,
        description: str = "",
        tags: builtins.list[str] | None = None,
        source: str = "registered",
        base_dir: Path | None = None,
    ) -> AdapterRecord:
        """Add an adapter folder as the next version of `name` (default: from its metadata)."""
        path = Path(path).resolve()
        facts = inspect_adapter(path)
        self._check_rank(facts)
        if base_dir is not None:
            check_compatible(facts, base_dir)
        existing = self.find_by_path(path)
        if existing is not None:
            raise Conflict(
                f"{path} is already registered as {existing.ref} (id {existing.id})",
                hint="a new version of an adapter is a new folder",
            )
        name = check_name(name or str(facts.metadata.get("name") or path.name))
        return self._insert(facts, name, description, tags or [], source)

    def _insert(
        self,
        facts: AdapterFacts,
        name: str,
        description: str,
        tags: builtins.list[str],
        source: str,
    ) -> AdapterRecord:
        if source not in SOURCES:
            raise InvalidInput(f"unknown adapter source {source!r}; allowed: {', '.join(SOURCES)}")
        now = _now()
        meta = facts.metadata
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        if not metrics and (facts.path / "metrics.json").is_file():
            metrics = _final_metrics(facts.path / "metrics.json")
        for _attempt in range(3):
            try:
                with self.db.begin() as conn:
                    version = _next_version(conn, name)
                    row = {
                        "id": uuid.uuid4().hex,
                        "name": name,
                        "version": version,
                        "type": "lora",
                        "base_model": facts.base_model,
                        "path": self._stored(facts.path),
                        "description": description or str(meta.get("description") or ""),
                        "dataset": meta.get("dataset"),
                        "metrics": metrics,
                        "file_size_mb": facts.file_size_mb,
                        "checksum_sha256": facts.checksum_sha256,
                        "tags": sorted({str(t) for t in tags}),
                        "rank": facts.rank,
                        "alpha": facts.alpha,
                        "target_modules": facts.target_modules,
                        "source": source,
                        "status": "ok",
                        "created_at": now,
                        "updated_at": now,
                    }
                    conn.execute(db.adapters.insert().values(**row))
                    _raise_top(conn, name, version)
            except Exception as exc:  # two registrations raced for the same version
                # Raised out of the `with`, so the transaction rolls back before the retry.
                if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                    continue
                raise
            return self.get(row["id"])
        raise Conflict(f"could not register {facts.path} as {name!r}: concurrent registrations")

    def update(
        self, ref: str, *, description: str | None = None, tags: builtins.list[str] | None = None
    ) -> AdapterRecord:
        rec = self.get(ref)
        values: dict[str, Any] = {"updated_at": _now()}
        if description is not None:
            values["description"] = description
        if tags is not None:
            values["tags"] = sorted({str(t) for t in tags})
        with self.db.begin() as conn:
            conn.execute(db.adapters.update().where(db.adapters.c.id == rec.id).values(**values))
        return self.get(rec.id)

    def set_metrics(self, ref: str, metrics: dict[str, Any]) -> None:
        rec = self.get(ref)
        with self.db.begin() as conn:
            conn.execute(
                db.adapters.update()
                .where(db.adapters.c.id == rec.id)
                .values(metrics={**rec.metrics, **metrics}, updated_at=_now())
            )

    def remove(self, ref: str) -> AdapterRecord:
        """Forget an adapter (its folder stays on disk)."""
        rec = self.get(ref)
        with self.db.begin() as conn:
            conn.execute(db.adapters.delete().where(db.adapters.c.id == rec.id))
        return rec

    def _set_status(self, rec: AdapterRecord, status: str) -> AdapterRecord:
        with self.db.begin() as conn:
            conn.execute(
                db.adapters.update()
                .where(db.adapters.c.id == rec.id)
                .values(status=status, updated_at=_now())
            )
        rec.status = status
        return rec

    def _check_rank(self, facts: AdapterFacts) -> None:
        if facts.rank > self.max_rank:
            raise InvalidInput(
                f"adapter at {facts.path} has LoRA rank {facts.rank}, above MAX_LORA_RANK="
                f"{self.max_rank} (engines such as vLLM are started with max_lora_rank)",
                hint=f"raise MAX_LORA_RANK to at least {engine_rank(facts.rank)}",
            )

    # --- scanning and verifying ----------------------------------------------------------
    def scan(self, roots: builtins.list[Path]) -> ScanResult:
        """Register new adapter folders under `roots`; flag changed and vanished ones."""
        result = ScanResult()
        seen: set[str] = set()
        for root in roots:
            for folder in _adapter_folders(Path(root)):
                key = str(folder.resolve())
                if key in seen:
                    continue
                seen.add(key)
                known = self.find_by_path(folder)
                try:
                    if known is None:
                        facts = inspect_adapter(folder)
                        self._check_rank(facts)
                        source = "training" if facts.metadata.get("task_name") else "scan"
                        name = _scan_name(facts)
                        result.added.append(self._insert(facts, name, "", [], source))
                    elif checksum(folder) != known.checksum_sha256:
                        result.changed.append(self._set_status(known, "changed"))
                    else:
                        if known.status != "ok":
                            self._set_status(known, "ok")
                        result.unchanged += 1
                except LoraflowError as exc:
                    result.skipped[key] = str(exc)
                except Exception as exc:  # a malformed folder must not stop a scan
                    result.skipped[key] = f"unreadable adapter folder: {exc}"
        for rec in self.list():
            if rec.path not in seen and not Path(rec.path).is_dir() and rec.status != "missing":
                result.missing.append(self._set_status(rec, "missing"))
        return result

    def verify(self, ref: str, *, fresh: bool = False) -> AdapterRecord:
        """The record, after checking its files still match the registered checksum.

        Unchanged files (same size, mtime, ctime, inode) reuse this process's digest;
        `fresh` reads every byte again.
        """
        rec = self.get(ref)
        path = Path(rec.path)
        if not is_adapter_folder(path):
            self._set_status(rec, "missing")
            raise NotFound(f"adapter {rec.ref} is registered at {path}, which no longer exists")
        try:
            actual = checksum(path, fresh=fresh)
        except OSError as exc:
            raise NotFound(f"adapter {rec.ref}: cannot read its files at {path}: {exc}") from exc
        if actual != rec.checksum_sha256:
            self._set_status(rec, "changed")
            raise InvalidInput(
                f"adapter {rec.ref} at {path} does not match its registered checksum "
                f"({rec.checksum_sha256[:12]}…, now {actual[:12]}…): the files were changed",
                hint="register the changed folder as a new version, or restore the files",
            )
        return rec


def _next_version(conn: Any, name: str) -> int:
    """One above the highest version `name` ever had, including forgotten ones."""
    c, hw = db.adapters.c, db.adapter_versions.c
    kept = conn.execute(select(func.max(c.version)).where(c.name == name)).scalar()
    ever = conn.execute(select(hw.top).where(hw.name == name)).scalar()
    return max(int(kept or 0), int(ever or 0)) + 1


def _raise_top(conn: Any, name: str, version: int) -> None:
    """Record `version` as the name's high-water mark (a racing insert fails as unique)."""
    t = db.adapter_versions
    done = conn.execute(
        t.update().where(t.c.name == name, t.c.top < version).values(top=version)
    ).rowcount
    if not done and conn.execute(select(t.c.top).where(t.c.name == name)).first() is None:
        conn.execute(t.insert().values(name=name, top=version))


def check_compatible(facts: AdapterFacts, base_dir: Path) -> None:
    """Raise a clear error when the adapter's layers do not fit the base model's."""
    if facts.layout is not None:
        check_fits(facts.layout, facts.path, Path(base_dir), facts.base_model)


def _adapter_folders(root: Path) -> list[Path]:
    """Adapter folders at `root`, one level below, or two (a task folder's final adapter)."""
    found = list(discover_adapters(root).values())
    if root.is_dir() and not is_adapter_folder(root):
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and not is_adapter_folder(sub):
                found.extend(discover_adapters(sub).values())
    return found


def safe_name(raw: str) -> str:
    """`raw` turned into a valid registry name (other characters become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw)).strip("-._") or "adapter"
    return cleaned[:128]


def _scan_name(facts: AdapterFacts) -> str:
    meta = facts.metadata
    # A training run's folder is <task>_<timestamp>; the adapter is named after the task.
    return safe_name(str(meta.get("task_name") or meta.get("name") or facts.path.name))


def _final_metrics(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    history = data.get("history")
    if isinstance(history, list) and history:
        last = history[-1] if isinstance(history[-1], dict) else {}
        for key in ("loss", "eval_loss"):
            if isinstance(last.get(key), int | float):
                out[f"final_{key}"] = last[key]
    # A preference run's held-out accuracy (chosen answer more likely), before and after.
    accuracy = data.get("preference_accuracy")
    if isinstance(accuracy, dict):
        for key in ("before", "after"):
            if isinstance(accuracy.get(key), int | float):
                out[f"preference_accuracy_{key}"] = accuracy[key]
    return out
