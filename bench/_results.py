"""Shared `--json FILE` output of the bench scripts: results plus the machine they ran on.

Every bench script calls `write_results(path, name, config, rows, ratios)` at its end;
`bench/report.py` reads these files. A file holds:

    {"name", "config", "rows": [{...}], "ratios": {label: x}, "baseline": label-of-1.0,
     "notes": [...], "machine": {...}, "command": [...], "started", "finished"}

`ratios` are loraflow vs its baseline measured in the same run (> 1 means loraflow is
better, unless `lower_is_better` names the ratio); `targets` maps a ratio's label to
(">=" or "<=", value), which the report marks met or missed. The load average is taken
when this module is imported (the script's start) and again when the file is written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loraflow.config import Settings
from loraflow.hardware import cpu_info

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PACKAGES = ("loraflow", "torch", "transformers", "peft", "trl", "faiss-cpu", "llama-cpp-python")

# Taken at import, i.e. when the bench script starts, so the report can show how busy the
# machine was across the whole run, not only at its end.
_STARTED = time.time()
_LOAD_AT_START = os.getloadavg()


def capability() -> dict[str, Any]:
    """The CPU's capability (ISA level, bf16/VNNI/AMX flags, threads) as loraflow reads it."""
    return cpu_info()


def capability_line(info: dict[str, Any] | None = None) -> str:
    """One line naming what the figures depend on: speed ratios differ across CPU kinds."""
    info = info or capability()
    flags = " ".join(info["flags"]) or "none of note"
    return (
        f"host: {info['cpu']}, {info['isa']} (flags: {flags}), {info['threads']} torch "
        f"threads of {info['cores']} cores, torch {info['torch']}"
    )


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    """Total memory in GiB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the figures depend on (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The checked-out commit, with '+dirty' when the tree has local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and dirty else head or None


def machine() -> dict[str, Any]:
    """The machine and software the run used, including the load average now and at start."""
    return {
        "cpu": cpu_model(),
        "capability": capability(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib(), 1),
        "platform": platform.platform(),
        "load_avg_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "git_commit": git_commit(),
    }


def write_results(
    path: str | Path | None,
    name: str,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    ratios: dict[str, float],
    *,
    baseline: str = "baseline",
    notes: list[str] | None = None,
    lower_is_better: list[str] | None = None,
    targets: dict[str, tuple[str, float]] | None = None,
    extra: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> Path | None:
    """Write one benchmark's results as JSON to `path` (no-op when None); returns the path.

    `argv` is the script and its arguments when they are not `sys.argv` (a call of main()).
    """
    if path is None:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "config": config,
        "rows": rows,
        "ratios": {k: float(v) for k, v in ratios.items()},
        "baseline": baseline,
        "lower_is_better": lower_is_better or [],
        "targets": {k: [op, float(v)] for k, (op, v) in (targets or {}).items()},
        "notes": notes or [],
        "machine": machine(),
        "command": [Path(sys.executable).name, *(argv or sys.argv)],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_STARTED)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - _STARTED, 1),
        **(extra or {}),
    }
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {out}")
    return out


def add_json_flag(parser: Any) -> None:
    """The `--json FILE` option every bench script takes; also prints the host's capability.

    Every bench builds its parser first, so the capability heads every run's output.
    """
    print(capability_line(), flush=True)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"also write the results as JSON (bench/report.py reads {RESULTS_DIR.name}/)",
    )


def add_int8_prompts_flag(parser: Any) -> None:
    """`--int8-prompts / --no-int8-prompts`: LOCAL_INT8_PROMPTS of the engine a bench loads,
    the setting's default unless given."""
    parser.add_argument(
        "--int8-prompts",
        action=argparse.BooleanOptionalAction,
        default=Settings.model_fields["local_int8_prompts"].default,
        help="LOCAL_INT8_PROMPTS of calibrated int8 (default: the setting's default)",
    )
