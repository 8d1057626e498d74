"""A version's chunk records in two memory-mapped files, read one record at a time.

A version with many chunks keeps its records out of meta.json: `chunks.npy` holds one fixed-size
row per chunk (id, document, position, offsets, where its text lies) and `chunks.text` holds
every chunk's text as UTF-8, one after another. Opening a version maps both files and reads
nothing else, so a worker that follows a publish does not parse every record first; a search
hit reads its one row and its text.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path

import numpy as np

from loraflow.rag.store import ChunkRecord

TABLE_FILE = "chunks.npy"
TEXT_FILE = "chunks.text"
ROW = np.dtype(
    [
        ("id", "<i8"),
        ("doc", "<i4"),
        ("position", "<i4"),
        ("start", "<i8"),
        ("end", "<i8"),
        ("text_at", "<i8"),
        ("text_len", "<i8"),
    ]
)


def table_files(chunks: Sequence[ChunkRecord], doc_index: dict[str, int]) -> dict[str, bytes]:
    """The two files holding `chunks` (ids increasing, as a store assigns them)."""
    texts = [c.text.encode("utf-8") for c in chunks]
    rows = np.zeros(len(chunks), dtype=ROW)
    rows["id"] = [c.chunk_id for c in chunks]
    if len(rows) > 1 and not bool(np.all(np.diff(rows["id"]) > 0)):
        raise ValueError("chunk ids must increase in insertion order")
    rows["doc"] = [doc_index[c.doc_id] for c in chunks]
    rows["position"] = [c.position for c in chunks]
    rows["start"] = [c.start for c in chunks]
    rows["end"] = [c.end for c in chunks]
    lengths = np.asarray([len(t) for t in texts], dtype=np.int64)
    rows["text_len"] = lengths
    rows["text_at"] = np.cumsum(lengths) - lengths
    buf = io.BytesIO()
    np.save(buf, rows)
    return {TABLE_FILE: buf.getvalue(), TEXT_FILE: b"".join(texts)}


def file_digest(path: Path) -> str:
    """The sha256 of a whole file, read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 22):
            h.update(piece)
    return h.hexdigest()


class ChunkTable(MutableMapping[int, ChunkRecord]):
    """chunk id → record over a saved version's mapped files, plus the changes made since.

    Iterates in insertion order (the saved rows, then chunks added since), as a dict would.
    """

    def __init__(self, folder: Path, docs: list[tuple[str, str]], n_chunks: int, n_text: int):
        # Both files are opened here, once: a later read never reopens a file that a newer
        # publish may have removed (an open mapping outlives its file's removal on POSIX).
        self._rows = np.load(folder / TABLE_FILE, mmap_mode="r")
        if self._rows.dtype != ROW or len(self._rows) != n_chunks:
            raise ValueError(f"{TABLE_FILE} holds {len(self._rows)} rows, not {n_chunks}")
        size = (folder / TEXT_FILE).stat().st_size
        if size != n_text:
            raise ValueError(f"{TEXT_FILE} holds {size} bytes, not {n_text}")
        self._text = (
            np.memmap(folder / TEXT_FILE, dtype=np.uint8, mode="r")
            if size
            else np.zeros(0, np.uint8)
        )
        self._ids = np.ascontiguousarray(self._rows["id"])
        if len(self._ids) > 1 and not bool(np.all(np.diff(self._ids) > 0)):
            raise ValueError(f"{TABLE_FILE} lists chunk ids out of order")
        self._docs = docs
        self._removed: set[int] = set()
        self._added: dict[int, ChunkRecord] = {}

    @property
    def saved_ids(self) -> np.ndarray:
        """The ids of the saved rows, increasing."""
        return self._ids

    def row(self, i: int) -> ChunkRecord:
        """The record of saved row `i` (as written, whatever changed since)."""
        r = self._rows[i]
        at, n = int(r["text_at"]), int(r["text_len"])
        doc_id, source = self._docs[int(r["doc"])]
        text = self._text[at : at + n].tobytes().decode("utf-8")
        return ChunkRecord(
            int(r["id"]), doc_id, source, int(r["position"]), text, int(r["start"]), int(r["end"])
        )

    def rows(self) -> Sequence[ChunkRecord]:
        """The saved rows as a sequence read on demand (a keyword index's row numbers)."""
        return _Rows(self)

    def _find(self, cid: int) -> int | None:
        i = int(np.searchsorted(self._ids, cid))
        if i < len(self._ids) and int(self._ids[i]) == cid and cid not in self._removed:
            return i
        return None

    def __getitem__(self, cid: int) -> ChunkRecord:
        found = self._added.get(cid)
        if found is not None:
            return found
        i = self._find(int(cid))
        if i is None:
            raise KeyError(cid)
        return self.row(i)

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, int) and (cid in self._added or self._find(cid) is not None)

    def __setitem__(self, cid: int, record: ChunkRecord) -> None:
        if self._find(int(cid)) is not None:
            self._removed.add(int(cid))
        self._added[int(cid)] = record

    def __delitem__(self, cid: int) -> None:
        if cid in self._added:
            del self._added[cid]
        elif self._find(int(cid)) is not None:
            self._removed.add(int(cid))
        else:
            raise KeyError(cid)

    def __iter__(self) -> Iterator[int]:
        for cid in self._ids.tolist():
            if cid not in self._removed:
                yield cid
        yield from list(self._added)

    def __len__(self) -> int:
        return len(self._ids) - len(self._removed) + len(self._added)

    def values(self) -> list[ChunkRecord]:  # type: ignore[override]
        """Every record in insertion order, read row by row (no per-id lookup)."""
        saved = [
            self.row(i) for i, cid in enumerate(self._ids.tolist()) if cid not in self._removed
        ]
        return saved + list(self._added.values())

    def max_id(self) -> int:
        saved = int(self._ids[-1]) if len(self._ids) else -1
        return max([saved, *self._added])

    def ids_of(self, doc_id: str) -> list[int]:
        """The ids of one document's chunks, without reading any other chunk's text."""
        docs = [i for i, (d, _) in enumerate(self._docs) if d == doc_id]
        out = []
        if docs:
            mask = np.isin(np.asarray(self._rows["doc"]), docs)
            out = [c for c in self._ids[mask].tolist() if c not in self._removed]
        return out + [c for c, r in self._added.items() if r.doc_id == doc_id]


class _Rows(Sequence[ChunkRecord]):
    def __init__(self, table: ChunkTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table.saved_ids)

    def __getitem__(self, i):  # type: ignore[no-untyped-def,override]  # noqa: ANN001, ANN204
        if isinstance(i, slice):
            return [self._table.row(j) for j in range(*i.indices(len(self)))]
        return self._table.row(int(i))
