"""Turn BASE_MODEL_NAME into a local folder or file; nothing is ever downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loraflow.errors import ModelLoadError
from loraflow.models.bundled import (
    BUNDLED_MODELS,
    READY_MARKER,
    bundled_folder,
    ensure_bundled,
    smollm2_gguf_path,
)

ModelKind = Literal["hf_dir", "hf_cache", "gguf", "bundled"]


@dataclass
class ResolvedModel:
    """Where a base model's files are, and how to load them."""

    kind: ModelKind
    path: Path
    gguf_file: str | None
    display_name: str


def resolve_base_model(name: str, cache_dir: Path) -> ResolvedModel:
    """Find model `name` on disk: bundled, a folder, a .gguf file, or the HF cache layout."""
    name = name.strip()
    if not name:
        raise ModelLoadError("BASE_MODEL_NAME is empty", hint="use bundled:smollm2 or a local path")
    if name.lower().startswith("bundled:"):
        key = name.lower()
        if key not in BUNDLED_MODELS:
            raise ModelLoadError(
                f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}"
            )
        return ResolvedModel("bundled", ensure_bundled(key, cache_dir), None, key)
    for candidate in _path_candidates(name, cache_dir):
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return ResolvedModel("hf_dir", candidate.resolve(), None, candidate.name)
        if candidate.is_file() and candidate.suffix.lower() == ".gguf":
            candidate = candidate.resolve()
            return ResolvedModel("gguf", candidate.parent, candidate.name, candidate.name)
    snapshot = _find_in_hf_cache(name, cache_dir)
    if snapshot is not None:
        return ResolvedModel("hf_cache", snapshot, None, name)
    raise _not_found(name, cache_dir)


def describe_base_model(name: str, cache_dir: Path) -> str:
    """One line on where model `name` is, without loading or converting it; raise if absent."""
    key = name.strip().lower()
    if key in BUNDLED_MODELS:
        folder = bundled_folder(key, cache_dir)
        if (folder / READY_MARKER).is_file():
            return f"{key} (converted, at {folder})"
        return f"{key} (converted from {smollm2_gguf_path()} into {folder} on first load)"
    resolved = resolve_base_model(name, cache_dir)
    where = resolved.path / resolved.gguf_file if resolved.gguf_file else resolved.path
    return f"{resolved.display_name} ({resolved.kind} at {where})"


def list_local_models(cache_dir: Path) -> list[dict]:
    """Models found in `cache_dir`: HF-cache models, plain model folders and .gguf files."""
    found: list[dict] = []
    for root in (cache_dir, cache_dir / "hub"):
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name.startswith("models--"):
                repo_id = entry.name.removeprefix("models--").replace("--", "/")
                snapshot = _pick_snapshot(entry)
                if snapshot is not None:
                    found.append(_entry(repo_id, "hf_cache", snapshot))
            elif root == cache_dir and entry.is_dir() and (entry / "config.json").is_file():
                found.append(_entry(entry.name, "hf_dir", entry))
            elif entry.is_file() and entry.suffix.lower() == ".gguf":
                found.append(_entry(entry.name, "gguf", entry))
    for key in BUNDLED_MODELS:
        folder = bundled_folder(key, cache_dir)
        if (folder / READY_MARKER).is_file():
            found.append(_entry(key, "bundled", folder))
    return found


def hf_cache_folder(name: str, cache_dir: Path) -> Path:
    """The folder the Hugging Face cache layout uses for repo id `name`."""
    return cache_dir / ("models--" + name.replace("/", "--"))


def _path_candidates(name: str, cache_dir: Path) -> list[Path]:
    given = Path(name).expanduser()
    if given.is_absolute():
        return [given]
    # A relative name may be a path from the working dir or a plain folder inside CACHE_DIR.
    return [given, cache_dir / given]


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    if name.startswith(("/", "~", ".")) or name.lower().endswith(".gguf") or len(parts) > 2:
        return False
    return all(p and p not in (".", "..") for p in parts)


def _find_in_hf_cache(name: str, cache_dir: Path) -> Path | None:
    if not _looks_like_repo_id(name):
        return None
    for root in (cache_dir, cache_dir / "hub"):
        repo = hf_cache_folder(name, root)
        if repo.is_dir():
            snapshot = _pick_snapshot(repo)
            if snapshot is not None:
                return snapshot
    return None


def _pick_snapshot(repo: Path) -> Path | None:
    """The model files of a `models--Org--Name` folder, in either cache layout.

    The Hugging Face hub layout keeps them in `snapshots/<revision>/` (the one `refs/main`
    names, else the newest complete one); the seed's guide draws them straight inside the
    folder (`models--Org--Name/config.json`), as a copied or hand-made cache has them.
    """
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text(encoding="utf-8").strip()
        if (pinned / "config.json").is_file():
            return pinned
    complete = []
    if snapshots.is_dir():
        complete = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    if complete:
        return max(complete, key=lambda s: s.stat().st_mtime)
    return repo if (repo / "config.json").is_file() else None


def _entry(name: str, kind: str, path: Path) -> dict:
    return {"name": name, "kind": kind, "path": str(path), "size_mb": _size_mb(path)}


def _size_mb(path: Path) -> float:
    if path.is_file():
        total = path.stat().st_size
    else:
        # stat() follows the HF cache's snapshot symlinks to the real blobs.
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / (1024 * 1024), 1)


def _not_found(name: str, cache_dir: Path) -> ModelLoadError:
    if not _looks_like_repo_id(name):
        path = Path(name).expanduser()
        what = "has no config.json" if path.is_dir() else "does not exist"
        return ModelLoadError(
            f"model path {str(path)!r} {what}; expected a folder with config.json and "
            f"*.safetensors, or a .gguf file",
            hint="fix BASE_MODEL_NAME, or use BASE_MODEL_NAME=bundled:smollm2",
        )
    expected = hf_cache_folder(name, cache_dir) / "snapshots" / "<revision>"
    return ModelLoadError(
        f"model {name!r} was not found locally, and loraflow cannot download models "
        f"(it runs offline)",
        hint=(
            f"put it in CACHE_DIR in the Hugging Face layout at {expected} (or straight "
            f"in {expected.parent.parent}) with config.json and *.safetensors, give a local "
            f"folder or .gguf path, "
            f"or use BASE_MODEL_NAME=bundled:smollm2"
        ),
    )
