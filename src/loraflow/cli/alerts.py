"""`loraflow alerts list|rules`: alerts and their rules, read and written in the database.

No server is needed: the running workers read the rules from the same database at each
evaluation, so a change here takes effect within ALERT_EVAL_INTERVAL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from loraflow import db
from loraflow.cli.common import AsJson, DataDir, app, console, make_settings, print_json
from loraflow.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from loraflow.config import Settings

alerts_app = typer.Typer(help="Alerts (active and recent) and their rules.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@contextmanager
def _database(data_dir: Path | None) -> Iterator[tuple[Settings, Engine]]:
    """The settings and an engine on their database, disposed of on leaving."""
    settings = make_settings(data_dir=data_dir)
    engine = db.make_engine(settings.db_url, settings.db_busy_timeout)
    try:
        yield settings, engine
    finally:
        engine.dispose()


@alerts_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(help="Most resolved alerts shown.")] = 20,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Pending and firing alerts, then the most recently resolved ones."""
    from loraflow.services.ops.alerts import list_alerts

    with _database(data_dir) as (_, engine):
        found = list_alerts(engine, limit)
    if as_json:
        print_json(found)
        return
    table = Table("id", "state", "rule", "target", "variant", "value", "threshold", "since")
    for a in found["active"] + found["recent"]:
        value = "-" if a["last_value"] is None else f"{a['last_value']:.4g}"
        table.add_row(
            str(a["id"]),
            a["state"],
            a["rule"],
            a["target"],
            a["variant"] or "-",
            f"{value} {a['unit']}",
            f"{'>' if a['comparison'] == 'above' else '<'} {a['threshold']:g}",
            (a["ended_at"] or a["fired_at"] or a["started_at"] or "")[:19],
        )
    console.print(table if table.rows else "no alerts")


def _parse(pairs: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        rule, dot, field = key.partition(".")
        if not sep or not dot:
            raise InvalidInput(
                f"--set {pair!r} must be RULE.FIELD=NUMBER, e.g. latency_p95.threshold=300"
            )
        try:
            out.setdefault(rule, {})[field] = float(value)
        except ValueError:
            raise InvalidInput(f"--set {pair!r}: {value!r} is not a number") from None
    return out


@alerts_app.command("rules")
def rules_cmd(
    target: Annotated[
        str, typer.Argument(help="A deployment target, or '*' for every target and resources.")
    ] = "*",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="RULE.FIELD=NUMBER (fields: threshold, window, for; threshold 0 turns it "
            "off), e.g. --set latency_p95.threshold=300 --set error_rate.for=120.",
        ),
    ] = None,
    reset: Annotated[bool, typer.Option(help="Drop the target's overrides first.")] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Show the rules in force for a target, or override them (--set, --reset)."""
    from loraflow.services.ops import alert_rules

    with _database(data_dir) as (settings, engine):
        if set_ or reset:
            changes = _parse(set_ or [])
            view = alert_rules.update(settings, engine, target, changes, replace=reset)
        else:
            view = alert_rules.view(settings, engine, target)
    if as_json:
        print_json(view)
        return
    table = Table("rule", "measures", "alerts when", "window s", "for s", "overridden")
    for name, r in view["rules"].items():
        when = f"{r['comparison']} {r['threshold']:g} {r['unit']}" if r["enabled"] else "off"
        table.add_row(
            name,
            r["measures"],
            when,
            f"{r['window']:g}",
            f"{r['for']:g}",
            ", ".join(view["overrides"].get(name, {})) or "-",
        )
    console.print(f"alert rules of {view['target']}")
    console.print(table)
