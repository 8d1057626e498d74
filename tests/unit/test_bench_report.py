"""bench/report.py turns results files into BENCHMARKS.md plus one PNG per benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(name: str) -> ModuleType:
    # bench/ is a folder of scripts, not a package: they import their siblings by name.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_report_writes_tables_ratios_figures_and_not_run_sections(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    write = _bench("_results").write_results
    write(
        results / "train_throughput.json",
        "train_throughput",
        {"steps": 3},
        [
            {"config": "padded", "real_tok_per_s": 100.0},
            {"config": "loraflow", "real_tok_per_s": 250.0},
        ],
        {"loraflow vs padded": 2.5, "loraflow vs best built-in": 1.1},
        baseline="padded",
        targets={"loraflow vs padded": (">=", 2.0), "loraflow vs best built-in": (">=", 1.2)},
        argv=["bench/train_throughput.py", "--steps", "3"],
    )
    write(
        results / "load.json",
        "load",
        {"clients": 2},
        [{"operation": "ask", "count": 4, "errors": 0, "p50_ms": 120.0}],
        {"ask p50 under load vs alone": 1.8, "first token p50 s": 0.8},
        lower_is_better=["ask p50 under load vs alone"],
        targets={"first token p50 s": ("<=", 1.0)},
        notes=["zero errors; every operation exercised"],
        extra={"rss": {"samples": [[0.0, 900.0], [3.0, 905.5]]}},
        argv=["bench/load.py", "--clients", "2"],
    )
    (results / "broken.json").write_text("{not json")

    assert _bench("report").main(["--results", str(results), "--docs", str(docs)]) == 0

    md = (docs / "BENCHMARKS.md").read_text()
    assert "| loraflow vs padded | 2.50x | higher | >= 2 | yes |" in md
    assert "| loraflow vs best built-in | 1.10x | higher | >= 1.2 | **no** |" in md
    assert "| ask p50 under load vs alone | 1.80x | lower |" in md
    # An upper-bound target says by itself that lower is better.
    assert "| first token p50 s | 0.80x | lower | <= 1 | yes |" in md
    assert "| padded | 100 |" in md and "| loraflow | 250 |" in md
    assert "`.venv/bin/python bench/train_throughput.py --steps 3`" in md
    assert "| Training throughput | ran | 1/2 |" in md
    # Benchmarks without results are listed as not run, with the command that runs them.
    assert "**Not run.** Reproduce with `.venv/bin/python bench/generate.py" in md
    assert "shared 2-core machine" in md and "load average" in md
    for stem in ("train_throughput", "load"):
        png = docs / "bench" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{stem}](bench/{stem}.png)" in md
    assert not (docs / "bench" / "generate.png").exists()
    doc = json.loads((results / "load.json").read_text())
    assert doc["machine"]["load_avg_start"] and doc["machine"]["versions"]["python"]
