"""`loraflow adapters benchmark NAME`: latency and tokens/s of an adapter against its base."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loraflow.cli.adapters import adapters_app
from loraflow.cli.common import AsJson, DataDir, console, print_json, runtime_for


@adapters_app.command("benchmark")
def benchmark_cmd(
    ref: Annotated[str, typer.Argument(help="A registered adapter: name, name@vN or id.")],
    requests: Annotated[
        int, typer.Option(help="Requests to each side (base and adapter, alternating).")
    ] = 8,
    max_tokens: Annotated[
        int, typer.Option(help="Tokens each request generates (end-of-sequence ignored).")
    ] = 16,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Latency p50/p95 and tokens/s of an adapter and of its base model, in one run.

    Runs on the local engine in this process (the server may keep running); the result is
    stored in the adapter's record (performance_metrics.benchmark) and shown by
    `loraflow adapters show` beside the latest validation.
    """
    from loraflow.services.manage.benchmark import benchmark

    rt = runtime_for(data_dir, load_local=True)
    with console.status(f"benchmarking {ref} against the base model"):
        out = benchmark(rt, ref, requests=requests, max_new_tokens=max_tokens)
    if as_json:
        print_json(out)
        return
    table = Table("", "p50 ms", "p95 ms", "tokens/s", "requests")
    for label, side in (("base", out["base"]), (out["adapter"], out["with_adapter"])):
        table.add_row(
            label,
            f"{side['latency_p50_ms']:g}",
            f"{side['latency_p95_ms']:g}",
            f"{side['tokens_per_s']:g}" if side["tokens_per_s"] else "-",
            str(side["requests"]),
        )
    console.print(table)
    console.print(
        f"adapter/base tokens/s: {out['tokens_per_s_ratio']} "
        f"({out['engine']} on {out['device']}, {out['max_new_tokens']} tokens a request)"
    )
