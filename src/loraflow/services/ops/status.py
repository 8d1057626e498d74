"""What an instance is doing: the server's loaded models (if one answers), training jobs, alerts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from loraflow import db
from loraflow.config import Settings
from loraflow.hardware import hardware_summary
from loraflow.services.ops.alerts import list_alerts
from loraflow.services.train.jobs import TrainingContext, list_tasks


def server_url(settings: Settings) -> str:
    """Where this instance's server listens, as a loopback URL when it binds every address."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def server_headers(settings: Settings) -> dict[str, str]:
    """The API key header the server wants, when API_KEY is set."""
    return {"X-API-Key": settings.api_key_list[0]} if settings.api_key_list else {}


def instance_status(settings: Settings, timeout: float = 3.0) -> dict[str, Any]:
    """Running, queued and finished jobs from the database; loaded models from the server."""
    engine = db.make_engine(settings.db_url)
    try:
        tasks = list_tasks(TrainingContext(settings=settings, db=engine))
        with engine.connect() as conn:
            rows = conn.execute(select(db.deployments).order_by(db.deployments.c.target)).all()
        deployed = [
            {
                "target": r.target,
                "strategy": r.strategy,
                "version": r.version,
                "variants": r.state.get("variants", []),
            }
            for r in rows
        ]
        alerts = list_alerts(engine, limit=5)
    finally:
        engine.dispose()
    by_status = Counter(t["status"] for t in tasks)
    url, headers = server_url(settings), server_headers(settings)
    server: dict[str, Any]
    try:
        r = httpx.get(f"{url}/model_info", timeout=timeout, headers=headers)
        r.raise_for_status()
        server = {"url": url, "up": True, **r.json()}
        # /health answers 503 when nothing can answer; its body says why either way.
        h = httpx.get(f"{url}/health", timeout=timeout + 3, headers=headers).json()
        server["health"] = h.get("status")
        server["remote_state"] = (h.get("details") or {}).get("ollama_service")
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
        server = {"url": url, "up": False, "error": str(exc) or type(exc).__name__}
    return {
        "server": server,
        "jobs": {
            "counts": dict(by_status),
            "running": [t for t in tasks if t["status"] == "running"],
            "queued": [t for t in tasks if t["status"] == "pending"],
        },
        "deployments": deployed,
        "alerts": alerts,
        "data_dir": str(settings.data_path),
        # The CPU's capability and the precisions `auto` picks on it (never measures here).
        "host": hardware_summary(settings.data_path),
    }
