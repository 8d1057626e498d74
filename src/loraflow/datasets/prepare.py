"""`loraflow prepare`: dataset files in, shuffled train/val JSONL files and statistics out."""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.datasets.encode import encode_examples
from loraflow.datasets.formats import Example, check_type, guess_type, load_examples
from loraflow.datasets.records import DATA_SUFFIXES, read_records
from loraflow.errors import InvalidInput


@dataclass
class PrepareReport:
    """What prepare wrote and how large it is."""

    train_path: Path
    val_path: Path
    files: dict[str, str] = field(default_factory=dict)  # file name -> detected type
    n_train: int = 0
    n_val: int = 0
    tokens: dict[str, float] = field(default_factory=dict)


def find_dataset_files(paths: list[Path]) -> list[Path]:
    """Dataset files among `paths` (folders are searched recursively), sorted."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in DATA_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise InvalidInput(f"{str(p)!r} does not exist")
    if not found:
        raise InvalidInput(
            f"no dataset files ({', '.join(DATA_SUFFIXES)}) in {', '.join(map(str, paths))}",
            hint="put novels in data/raw/, or run `loraflow prepare --sample`",
        )
    return found


def detect_type(path: Path) -> str:
    """The format of a dataset file, from its suffix and first record."""
    if path.suffix.lower() == ".txt":
        return "raw"
    records = read_records(path)
    kind = guess_type(records[0].data) if records else None
    if kind is None:
        raise InvalidInput(
            f"cannot tell the format of {path.name!r} from its first record",
            hint="records need 'instruction'/'output' (alpaca), 'conversations' (sharegpt) or "
            "'content' (raw)",
        )
    return kind


def split_train_val(
    examples: list[Example], val_split: float, seed: int = 42
) -> tuple[list[Example], list[Example]]:
    """Shuffle and split; at least one validation example when there are two or more."""
    if not 0.0 <= val_split < 1.0:
        raise InvalidInput(f"val_split={val_split!r} must be in [0, 1)")
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_val = round(len(items) * val_split)
    if val_split > 0 and n_val == 0 and len(items) >= 2:
        n_val = 1
    return items[n_val:], items[:n_val]


def prepare(
    inputs: list[Path],
    out_dir: Path,
    *,
    dataset_type: str | None = None,
    chunk_size: int = 2048,
    val_split: float = 0.1,
    tokenizer: Any = None,
    max_len: int = 512,
) -> PrepareReport:
    """Parse every file, split into train/val and write `train.jsonl` and `val.jsonl`."""
    examples: list[Example] = []
    files: dict[str, str] = {}
    for path in find_dataset_files(inputs):
        kind = check_type(dataset_type) if dataset_type else detect_type(path)
        files[path.name] = kind
        examples += load_examples(path, kind, chunk_size)
    train, val = split_train_val(examples, val_split)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out_dir / "train.jsonl", out_dir / "val.jsonl", files)
    for path, rows in ((report.train_path, train), (report.val_path, val)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    report.n_train, report.n_val = len(train), len(val)
    if tokenizer is not None:
        lengths = [len(e.input_ids) for e in encode_examples(examples, tokenizer, 10**9)]
        report.tokens = token_stats(lengths, max_len)
    return report


def token_stats(lengths: list[int], max_len: int) -> dict[str, float]:
    """Count, total, mean, median, max and the share cut by `max_len`."""
    if not lengths:
        return {"sequences": 0, "total": 0}
    return {
        "sequences": len(lengths),
        "total": sum(lengths),
        "mean": round(statistics.fmean(lengths), 1),
        "median": statistics.median(lengths),
        "max": max(lengths),
        "over_max_len": sum(1 for n in lengths if n > max_len),
    }
