"""Load and soak test of a real loraflow server: latency percentiles, throughput, errors, RSS.

Starts `loraflow serve` on 127.0.0.1 in a temporary data dir (or targets --url, loopback
only), measures every operation alone with one client (the baseline), then drives
--clients concurrent clients for --duration seconds over a mix of /ask,
/v1/chat/completions (plain and streaming), /v1/embeddings and story-memory writes, while
sampling the server's RSS. Exits 1 on any error, on an operation never exercised, or when
RSS grows between the first and last quarter of the run by more than --max-rss-growth.

    .venv/bin/python bench/load.py                          # 8 clients, 60 s
    .venv/bin/python bench/load.py --duration 600 --json bench/results/load.json   # soak
    .venv/bin/python bench/load.py --url http://127.0.0.1:8001 --clients 4 --duration 30
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from typing import Any

import numpy as np
from _load_client import OPS, Client, Sample, Target, discover
from _results import add_json_flag, write_results
from _rss import RssSampler
from _server import BenchServer, require_loopback

__all__ = ["OPS", "main"]


def stats(samples: list[Sample], seconds: float) -> dict[str, Any]:
    """Latency percentiles (ms) of the successful samples, throughput and error count."""
    ok = np.array([s.latency for s in samples if s.error is None]) * 1000
    pct = np.percentile(ok, [50, 95, 99]) if len(ok) else [float("nan")] * 3
    return {
        "count": len(samples),
        "errors": sum(s.error is not None for s in samples),
        "p50_ms": round(float(pct[0]), 1),
        "p95_ms": round(float(pct[1]), 1),
        "p99_ms": round(float(pct[2]), 1),
        "throughput_per_s": round(len(ok) / seconds, 3) if seconds > 0 else 0.0,
    }


def baseline(target: Target, reps: int) -> tuple[dict[str, float], float]:
    """Each operation alone, one client, `reps` times: p50 ms per op and ops/s in sequence."""
    client = Client(target, 10_000)
    try:
        started = time.perf_counter()
        samples = [client.run_op(op, started) for _ in range(reps) for op in OPS]
        seconds = time.perf_counter() - started
    finally:
        client.close()
    errors = [s for s in samples if s.error]
    if errors:
        raise SystemExit(f"baseline failed: {errors[0].op}: {errors[0].error}")
    by_op = {op: float(np.median([s.latency for s in samples if s.op == op])) * 1000 for op in OPS}
    return by_op, len(samples) / seconds


def drive(target: Target, clients: int, duration: float) -> tuple[list[Sample], float]:
    """`clients` threads cycling through OPS until `duration` ends; (samples, seconds)."""
    workers = [Client(target, i) for i in range(clients)]
    samples: list[Sample] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    end = t0 + duration

    def loop(c: Client) -> None:
        # Clients start at different operations, so every kind is in flight at once.
        for k in itertools.count(c.index):
            if time.perf_counter() >= end:
                return
            s = c.run_op(OPS[k % len(OPS)], t0)
            with lock:
                samples.append(s)

    threads = [threading.Thread(target=loop, args=(c,)) for c in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for c in workers:
        c.close()
    return samples, seconds


def run(args: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    """Baseline, then the load phase with RSS sampling; the results as one dict."""
    target = discover(url, args.max_tokens)
    print(f"target {url}: chat models {target.chat_models}, embeddings {target.embedding_model}")
    alone, seq_rate = baseline(target, args.baseline_reps)
    print(f"baseline (1 client, {args.baseline_reps} x each op): {seq_rate:.2f} ops/s")
    t0 = time.perf_counter()
    sampler = RssSampler(pid, args.sample_every, t0)
    sampler.start()
    samples, seconds = drive(target, args.clients, args.duration)
    sampler.stopped.set()
    sampler.join()
    rss = sampler.summary(seconds)
    per_op = {op: stats([s for s in samples if s.op == op], seconds) for op in OPS}
    for op in OPS:
        per_op[op]["alone_p50_ms"] = round(alone[op], 1)
    total = stats(samples, seconds)
    errors = [f"{s.op} at {s.t:.1f}s: {s.error}" for s in samples if s.error]
    return {
        "per_op": per_op,
        "total": total,
        "seconds": round(seconds, 1),
        "sequential_ops_per_s": round(seq_rate, 3),
        "rss": rss,
        "errors": errors[:50],
    }


def verdict(result: dict[str, Any], max_growth: float) -> list[str]:
    """Reasons the run failed (empty when it passed)."""
    problems = []
    if result["total"]["errors"]:
        problems.append(f"{result['total']['errors']} errors, first: {result['errors'][0]}")
    missing = [op for op, s in result["per_op"].items() if s["count"] == 0]
    if missing:
        problems.append(f"operations never exercised: {missing}")
    growth = result["rss"]["growth_ratio"]
    if growth is not None and growth > max_growth:
        problems.append(
            f"server RSS grew {growth:.1%} ({result['rss']['growth_mb']} MB) between the first "
            f"and last quarter; bound {max_growth:.0%}"
        )
    return problems


def print_report(result: dict[str, Any], clients: int) -> None:
    print(f"\n{clients} clients, {result['seconds']} s")
    print(f"{'operation':12s} {'count':>6s} {'errors':>6s} {'p50 ms':>9s} {'p95 ms':>9s} "
          f"{'p99 ms':>9s} {'ops/s':>7s} {'alone p50':>10s} {'p50/alone':>9s}")  # fmt: skip
    rows = [*result["per_op"].items(), ("total", result["total"])]
    for op, s in rows:
        alone = s.get("alone_p50_ms")
        slow = f"{s['p50_ms'] / alone:8.2f}x" if alone else "        -"
        alone_s = f"{alone:10.1f}" if alone else "         -"
        print(f"{op:12s} {s['count']:6d} {s['errors']:6d} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} "
              f"{s['p99_ms']:9.1f} {s['throughput_per_s']:7.2f} {alone_s} {slow}")  # fmt: skip
    ratio = result["total"]["throughput_per_s"] / result["sequential_ops_per_s"]
    print(f"throughput {clients} clients / 1 client in sequence: {ratio:.2f}x")
    rss = result["rss"]
    if rss["growth_mb"] is not None:
        print(f"server RSS first quarter {rss['first_quarter_mb']} MB, last quarter "
              f"{rss['last_quarter_mb']} MB: growth {rss['growth_mb']} MB "
              f"({rss['growth_ratio']:.1%}), max {rss['max_mb']} MB; second half "
              f"{rss['second_half_mb_per_min']} MB/min")  # fmt: skip
    else:
        print("server RSS not sampled (pass --pid for a server started elsewhere)")


def to_json(args: argparse.Namespace, result: dict[str, Any], problems: list[str]) -> None:
    per_op = result["per_op"]
    rows = [{"operation": op, **s} for op, s in [*per_op.items(), ("total", result["total"])]]
    ratios = {
        f"throughput {args.clients} clients vs 1": result["total"]["throughput_per_s"]
        / result["sequential_ops_per_s"]
    }
    for op, s in per_op.items():
        if s["count"] and s["errors"] < s["count"]:
            ratios[f"{op} p50 under load vs alone"] = s["p50_ms"] / s["alone_p50_ms"]
    rss = result["rss"]
    notes = [f"FAILED: {p}" for p in problems] or ["zero errors; every operation exercised"]
    if rss["growth_mb"] is not None:
        notes.append(
            f"server RSS {rss['first_quarter_mb']} MB in the first quarter, "
            f"{rss['last_quarter_mb']} MB in the last: growth {rss['growth_mb']} MB "
            f"({rss['growth_ratio']:.1%}; bound {args.max_rss_growth:.0%})"
        )
    config = {
        k: getattr(args, k)
        for k in ("clients", "duration", "max_tokens", "baseline_reps", "sample_every")
    }
    config["max_rss_growth"] = args.max_rss_growth
    config["external_url"] = args.url is not None
    write_results(
        args.json,
        "load",
        config,
        rows,
        ratios,
        baseline="1 client, each op alone",
        notes=notes,
        lower_is_better=[k for k in ratios if "p50" in k],
        # The RSS curve and the errors travel too: report.py plots the soak from them.
        extra={"rss": rss, "errors": result["errors"], "seconds": result["seconds"]},
        argv=["bench/load.py", *args.argv],
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server (loopback only)")
    ap.add_argument("--pid", type=int, default=None, help="its process id, to sample RSS")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (1-64)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (soak: 600)")
    ap.add_argument("--max-tokens", type=int, default=16, help="new tokens per generation")
    ap.add_argument("--baseline-reps", type=int, default=3, help="runs of each op alone")
    ap.add_argument("--sample-every", type=float, default=3.0, help="RSS sample interval (s)")
    ap.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.10,
        help="fail when RSS grows more than this fraction (first vs last quarter)",
    )
    add_json_flag(ap)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= args.clients <= 64:
        ap.error(f"--clients {args.clients} is not in 1-64")
    if not 1 <= args.duration <= 3600:
        ap.error(f"--duration {args.duration} is not in 1-3600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test; 0 when it passed, 1 otherwise."""
    args = parse(argv)
    server = None
    if args.url:
        url, pid = require_loopback(args.url), args.pid
    else:
        server = BenchServer()
        print(f"starting loraflow serve on {server.url} (data in {server.data_dir})", flush=True)
        server.wait_ready()
        url, pid = server.url, server.pid
    try:
        result = run(args, url, pid)
    finally:
        if server is not None:
            server.stop()
    print_report(result, args.clients)
    problems = verdict(result, args.max_rss_growth)
    if args.json:
        to_json(args, result, problems)
    for p in problems:
        print(f"FAILED: {p}")
    if not problems:
        print("PASSED: zero errors, every operation exercised, RSS growth within bound")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
