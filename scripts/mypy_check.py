#!/usr/bin/env python3
"""Run mypy over src/ and hold its errors to mypy-baseline.txt, which may only shrink.

The baseline counts today's errors per file and error code (not per line, so moving code
does not disturb it). The check fails when a file has more errors of a code than its entry
allows, and lists them. When a file has fewer, it fails too and asks for
`scripts/mypy_check.py --update`, so the baseline keeps up with every fix. The modules that
pyproject.toml checks strictly (its `disallow_untyped_defs` overrides) may have no entry.

    python scripts/mypy_check.py            # check
    python scripts/mypy_check.py --update   # write today's counts to the baseline
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mypy-baseline.txt"
# path:line[:column]: error: message  [code]
ERROR = re.compile(
    r"^(?P<path>[^:\s][^:]*):\d+(?::\d+)?: error: (?P<msg>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)
HEADER = """\
# mypy errors allowed per file and error code: `path: code count`.
# Written by `python scripts/mypy_check.py --update`; it may only shrink (see that script).
"""

Key = tuple[str, str]


def run_mypy(extra: list[str]) -> tuple[int, list[str]]:
    """mypy's exit status and its output lines (settings from pyproject.toml)."""
    cmd = [sys.executable, "-m", "mypy", "--no-pretty", "--show-error-codes", "--no-color-output"]
    proc = subprocess.run(cmd + extra, cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def parse_errors(lines: list[str]) -> dict[Key, list[str]]:
    """The error lines of mypy's output by (file, code); notes are left out."""
    found: dict[Key, list[str]] = {}
    for line in lines:
        m = ERROR.match(line)
        if m is None:
            continue
        path = Path(m["path"]).as_posix()
        found.setdefault((path, m["code"] or "misc"), []).append(line)
    return found


def read_baseline(path: Path) -> Counter[Key]:
    counts: Counter[Key] = Counter()
    if not path.exists():
        return counts
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(?P<path>\S+): (?P<code>[\w-]+) (?P<count>\d+)", line)
        if m is None:
            raise SystemExit(f"{path.name}:{n}: expected `path: code count`, got {raw!r}")
        counts[(m["path"], m["code"])] = int(m["count"])
    return counts


def write_baseline(path: Path, counts: Counter[Key]) -> None:
    rows = [f"{p}: {c} {n}" for (p, c), n in sorted(counts.items()) if n > 0]
    path.write_text(HEADER + "".join(row + "\n" for row in rows))


def strict_patterns(pyproject: Path) -> list[str]:
    """Module patterns of the [[tool.mypy.overrides]] that set disallow_untyped_defs."""
    config = tomllib.loads(pyproject.read_text())
    patterns: list[str] = []
    for override in config.get("tool", {}).get("mypy", {}).get("overrides", []):
        if override.get("disallow_untyped_defs"):
            module = override.get("module", [])
            patterns += [module] if isinstance(module, str) else list(module)
    return patterns


def module_of(path: str) -> str:
    """src/loraflow/a/b.py -> loraflow.a.b (a package's __init__ is the package)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts and parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_strict(path: str, patterns: list[str]) -> bool:
    module = module_of(path)
    for pattern in patterns:
        if pattern.endswith(".*"):
            package = pattern[:-2]
            if module == package or module.startswith(package + "."):
                return True
        elif fnmatch.fnmatchcase(module, pattern):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="write today's counts")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("mypy_args", nargs="*", help="passed to mypy (after --)")
    args = parser.parse_args(argv)

    status, lines = run_mypy(args.mypy_args)
    errors = parse_errors(lines)
    if status not in (0, 1) or (status == 1 and not errors):
        # mypy itself failed (bad configuration, a crash): nothing to compare.
        print("\n".join(lines))
        print(f"mypy exited with status {status} without type errors to compare", file=sys.stderr)
        return 2
    current: Counter[Key] = Counter({key: len(found) for key, found in errors.items()})
    baseline = read_baseline(args.baseline)
    strict = strict_patterns(ROOT / "pyproject.toml")

    # Strict modules pass outright: their errors always fail, baseline or not.
    strict_errors = [key for key in current if is_strict(key[0], strict)]
    if args.update:
        kept = Counter({k: n for k, n in current.items() if k not in strict_errors})
        grown = sorted(k for k, n in kept.items() if n > baseline.get(k, 0))
        write_baseline(args.baseline, kept)
        print(f"wrote {args.baseline.name}: {sum(kept.values())} errors in {len(kept)} entries")
        for path, code in grown:
            print(f"  more than before: {path}: {code} {kept[(path, code)]}")
        for key in strict_errors:
            print("\n".join(errors[key]))
        if strict_errors:
            print("strictly checked modules have errors: fix them (no baseline entry is allowed)")
            return 1
        return 0

    failed = False
    for key in sorted(current):
        allowed = 0 if key in strict_errors else baseline.get(key, 0)
        if current[key] > allowed:
            failed = True
            path, code = key
            print(f"{path}: {current[key]} [{code}] error(s), {allowed} allowed:")
            print("\n".join("  " + line for line in errors[key]))
    if failed:
        print(
            "\nmypy: new type errors (above). Fix them; the baseline only shrinks. "
            "A strictly checked module may have none."
        )
        return 1
    fewer = sorted(k for k, n in baseline.items() if current.get(k, 0) < n)
    if fewer:
        for path, code in fewer:
            now = current.get((path, code), 0)
            print(f"{path}: {code} {now} (baseline {baseline[(path, code)]})")
        print(
            "\nmypy: fewer errors than mypy-baseline.txt allows. Run "
            "`python scripts/mypy_check.py --update` and commit the smaller baseline."
        )
        return 1
    total = sum(current.values())
    print(f"mypy: {total} errors, none above mypy-baseline.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
