"""Build docs/BENCHMARKS.md and one PNG per benchmark from the bench scripts' JSON results.

    .venv/bin/python bench/report.py                       # bench/results/*.json -> docs/
    .venv/bin/python bench/report.py --results DIR --docs DIR

Each figure shows the ratios a bench script measured against its own baseline in the same
run (the baseline is the 1.0 line); a benchmark without a results file is listed as not run,
with the command that produces it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
from _rss import second_half_slope  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"
# (file stem, title, command that writes bench/results/<stem>.json), in report order.
SECTIONS = [
    ("train_throughput", "Training throughput", "bench/train_throughput.py --rounds 2"),
    ("generate", "Generation: loraflow vs llama.cpp", "bench/generate.py --tokens 128 --http"),
    ("multi_adapter", "Many adapters at once", "bench/multi_adapter.py"),
    ("ask_first_token", "First token of /ask", "bench/ask_first_token.py"),
    ("precision", "CPU precision: fp32 / bf16 / int8", "bench/precision.py"),
    ("retrieval_modes", "Retrieval quality and latency", "bench/retrieval_modes.py"),
    ("retrieval_scale", "Retrieval at scale (200,000 chunks)", "bench/retrieval_scale.py"),
    ("memory_activation", "Story-memory activation", "bench/memory_activation.py"),
    ("load", "Load and 10-minute soak", "bench/load.py --duration 600"),
]


def command(stem: str, script: str) -> str:
    return f"{PY} {script} --json bench/results/{stem}.json"


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every readable results file in `folder`, by its benchmark name."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}")
            continue
        if isinstance(doc, dict) and "ratios" in doc:
            out[doc.get("name") or path.stem] = doc
    return out


def target_met(value: float, target: list[Any]) -> bool:
    op, bound = target[0], float(target[1])
    return value >= bound if op == ">=" else value <= bound


def xfmt(v: float) -> str:
    """A ratio with two decimals, or two significant digits when it is tiny."""
    return f"{v:.2f}x" if abs(v) >= 0.1 else f"{v:.2g}x"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else str(v)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table over the union of the rows' keys, in first-seen order."""
    if not rows:
        return []
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def lower_is_better(doc: dict[str, Any]) -> set[str]:
    """The ratios where less is better: named so, or with an upper-bound (<=) target."""
    targets = doc.get("targets", {})
    upper = {label for label, t in targets.items() if t and t[0] in ("<=", "<")}
    return set(doc.get("lower_is_better", [])) | upper


def ratio_table(doc: dict[str, Any]) -> list[str]:
    lower = lower_is_better(doc)
    targets = doc.get("targets", {})
    lines = ["| ratio | value | better | target | met |", "|---|---|---|---|---|"]
    for label, value in doc["ratios"].items():
        t = targets.get(label)
        target = f"{t[0]} {t[1]:g}" if t else ""
        met = ("yes" if target_met(value, t) else "**no**") if t else ""
        better = "lower" if label in lower else "higher"
        lines.append(f"| {label} | {xfmt(value)} | {better} | {target} | {met} |")
    return lines


def figure(doc: dict[str, Any], out: Path) -> None:
    """Horizontal bars of every ratio against the baseline's 1.0 (plus RSS over time for load)."""
    ratios = doc["ratios"]
    lower = lower_is_better(doc)
    targets = doc.get("targets", {})
    rss = (doc.get("rss") or {}).get("samples") or []
    ncols = 2 if rss else 1
    fig, axes = plt.subplots(1, ncols, figsize=(8 * ncols, 0.5 * len(ratios) + 1.8))
    ax = axes[0] if ncols == 2 else axes
    labels = [f"{k} (lower is better)" if k in lower else k for k in ratios]
    colors = []
    for k, v in ratios.items():
        t = targets.get(k)
        colors.append(("tab:green" if target_met(v, t) else "tab:red") if t else "tab:blue")
    y = range(len(ratios))
    ax.barh(list(y), list(ratios.values()), color=colors)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    for i, (k, v) in enumerate(ratios.items()):
        ax.text(v, i, f" {xfmt(v)}", va="center", fontsize=8)
        t = targets.get(k)
        if t:
            ax.plot([t[1], t[1]], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"ratio vs baseline = 1.0 ({doc.get('baseline', 'baseline')})", fontsize=8)
    ax.set_title(f"{doc['name']}\nsame-run ratios (green: target met, red: missed)", fontsize=9)
    ax.set_xlim(0, max([*ratios.values(), 1.0]) * 1.25)
    if rss:
        rx = axes[1]
        rx.plot([s[0] for s in rss], [s[1] for s in rss], marker=".", linewidth=1)
        rx.set_xlabel("seconds into the load phase", fontsize=8)
        rx.set_ylabel("server RSS (MB)", fontsize=8)
        rx.set_title("server RSS during the run", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def load_avg(m: dict[str, Any]) -> str:
    start, end = m.get("load_avg_start"), m.get("load_avg_end")
    return f"{start} at start, {end} at end (1, 5, 15 min)" if start and end else "unknown"


def section(stem: str, title: str, script: str, doc: dict[str, Any] | None) -> list[str]:
    lines = [f"## {title}", ""]
    if doc is None:
        return [*lines, f"**Not run.** Reproduce with `{command(stem, script)}`.", ""]
    m = doc.get("machine", {})
    ran = " ".join(doc.get("command", [])[1:])
    lines += [
        f"Command: `{PY} {ran}`",
        "",
        f"Ran {doc.get('started', '?')} for {doc.get('duration_s', '?')} s; "
        f"load average {load_avg(m)}. Baseline (1.0): {doc.get('baseline', 'baseline')}.",
        "",
        f"Settings: `{json.dumps(doc.get('config', {}), ensure_ascii=False)}`",
        "",
        *table(doc.get("rows", [])),
        "",
        *ratio_table(doc),
        "",
        f"![{stem}](bench/{stem}.png)",
        "",
    ]
    lines += [f"- {n}" for n in [*doc.get("notes", []), *judged(doc)]]
    return [*lines, ""]


def judged(doc: dict[str, Any]) -> list[str]:
    """The report's own notes: targets met or missed, and how busy the machine was."""
    out = []
    targets = {k: t for k, t in doc.get("targets", {}).items() if k in doc["ratios"]}
    missed = [k for k, t in targets.items() if not target_met(doc["ratios"][k], t)]
    if targets and not missed:
        out.append(f"All {len(targets)} target(s) met in this run.")
    for k in missed:
        t = targets[k]
        out.append(f"Target missed: {k} = {xfmt(doc['ratios'][k])}, wanted {t[0]} {t[1]:g}.")
    samples = (doc.get("rss") or {}).get("samples")
    slope = second_half_slope(samples) if samples else None
    if slope is not None:
        out.append(f"Server RSS trend over the second half of the run: {slope:+.2f} MB/min.")
    m = doc.get("machine", {})
    cores = m.get("cores") or 1
    peak = max([*m.get("load_avg_start", [0]), *m.get("load_avg_end", [0])])
    if peak > cores:
        out.append(
            f"The load average reached {peak:g} on {cores} cores during this run (other "
            "work on the machine): absolute times are inflated; the ratios compare variants "
            "that ran under the same load."
        )
    return out


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| benchmark | status | targets met |", "|---|---|---|"]
    known = {stem for stem, _, _ in SECTIONS}
    extra = [(stem, stem, "") for stem in results if stem not in known]
    for stem, title, _ in [*SECTIONS, *extra]:
        doc = results.get(stem)
        if doc is None:
            lines.append(f"| {title} | not run | |")
            continue
        t = doc.get("targets", {})
        met = sum(target_met(doc["ratios"][k], v) for k, v in t.items() if k in doc["ratios"])
        failed = any(n.startswith("FAILED") for n in doc.get("notes", []))
        status = "ran, FAILED" if failed else "ran"
        lines.append(f"| {title} | {status} | {f'{met}/{len(t)}' if t else 'no ratio target'} |")
    return lines


def machine_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    if not results:
        return ["No results yet."]
    m = next(iter(results.values())).get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    loads = [max(d["machine"]["load_avg_start"][0], d["machine"]["load_avg_end"][0])
             for d in results.values() if "machine" in d]  # fmt: skip
    return [
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, no GPU",
        f"- Platform: {m.get('platform')}",
        f"- Versions: {versions}",
        f"- Commit: {m.get('git_commit')}",
        f"- Highest 1-minute load average seen at a run's start or end: {max(loads, default=0)}",
    ]


def render(results: dict[str, dict[str, Any]], docs: Path) -> Path:
    """Write the figures and BENCHMARKS.md into `docs`; returns the markdown path."""
    for stem, doc in results.items():
        figure(doc, docs / "bench" / f"{stem}.png")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{PY} bench/report.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `bench/results/*.json`.",
        "",
        "Every figure is a ratio against a baseline measured in the same run (the dashed 1.0 "
        "line), because absolute times on this machine move by ±30% from run to run. The "
        "figures were taken on a **shared 2-core machine** while other heavy jobs "
        "ran on it; each section gives the load average at its start and end. Read "
        "them as ratios, not as absolute speeds, and re-run on an idle machine before "
        "quoting a number.",
        "",
        "## Machine",
        "",
        *machine_lines(results),
        "",
        "## Summary",
        "",
        *summary(results),
        "",
        "Reproduce everything, then rebuild this page:",
        "",
        "```bash",
        *[command(stem, script) for stem, _, script in SECTIONS],
        f"{PY} bench/report.py",
        "```",
        "",
    ]
    for stem, title, script in SECTIONS:
        lines += section(stem, title, script, results.get(stem))
    extra = [s for s in results if s not in {stem for stem, _, _ in SECTIONS}]
    for stem in extra:
        lines += section(stem, stem, f"bench/{stem}.py", results[stem])
    out = docs / "BENCHMARKS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=REPO / "docs")
    args = ap.parse_args(argv)
    results = load_results(args.results)
    out = render(results, args.docs)
    print(f"{len(results)} benchmark(s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
