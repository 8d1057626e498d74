"""Prometheus metrics: request counts and latency per route, plus live gauges at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from loraflow.api.security import ASGIApp, Message, Receive, Scope, Send
from loraflow.services.catalog.selection import known_adapters
from loraflow.services.serve.chat import batch_stats

# Generation requests take seconds on a CPU; the buckets reach past a minute.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One registry per app, so several apps in one process never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraflow_http_requests",
            "HTTP requests by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loraflow_http_request_duration_seconds",
            "Time to the end of the response body, by route template.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts every HTTP request under its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


class RuntimeCollector:
    """Gauges read from the running instance when Prometheus scrapes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        rt = getattr(self.app.state, "runtime", None)
        if rt is None:
            return
        stats = batch_stats(rt)
        queue = GaugeMetricFamily(
            "loraflow_generation_queue", "Requests decoding now and waiting.", labels=["state"]
        )
        queue.add_metric(["running"], stats["running"])
        queue.add_metric(["waiting"], stats["waiting"])
        yield queue
        yield GaugeMetricFamily(
            "loraflow_adapters_loaded", "LoRA adapters loaded.", value=len(known_adapters(rt))
        )
        yield GaugeMetricFamily(
            "loraflow_documents",
            "Documents in the default knowledge base.",
            value=len(rt.store.list_documents()),
        )
        requests = CounterMetricFamily(
            "loraflow_model_requests", "Generation requests by model or adapter.", labels=["model"]
        )
        tokens = CounterMetricFamily(
            "loraflow_tokens",
            "Prompt and generated tokens by model or adapter.",
            labels=["model", "kind"],
        )
        for name, u in sorted(rt.usage.snapshot().items()):
            requests.add_metric([name], u.requests)
            tokens.add_metric([name, "prompt"], u.prompt_tokens)
            tokens.add_metric([name, "completion"], u.completion_tokens)
        yield requests
        yield tokens
        yield from deployment_metrics(rt)
        yield from alert_metrics(rt)
        yield GaugeMetricFamily(
            "loraflow_local_model_loaded",
            "1 when the local base model is loaded.",
            value=1 if rt.local is not None else 0,
        )


def deployment_metrics(rt: Any) -> Iterator[GaugeMetricFamily]:
    """Traffic share and live numbers of every deployment variant (this process's counts)."""
    from loraflow.services.manage.deployments import list_deployments

    share = GaugeMetricFamily(
        "loraflow_deployment_traffic_percent",
        "Traffic share of each deployment variant.",
        labels=["target", "variant", "adapter"],
    )
    served = GaugeMetricFamily(
        "loraflow_deployment_requests",
        "Requests and errors per deployment variant since its last change.",
        labels=["target", "variant", "outcome"],
    )
    for d in list_deployments(rt):
        stats = rt.traffic.get(d["target"], d["version"])
        for v in d["state"].get("variants", []):
            share.add_metric([d["target"], v["name"], v["adapter"]], v["weight"])
            s = stats.get(v["name"])
            if s is not None:
                served.add_metric([d["target"], v["name"], "ok"], s.requests - s.errors)
                served.add_metric([d["target"], v["name"], "error"], s.errors)
    yield share
    yield served


def alert_metrics(rt: Any) -> Iterator[GaugeMetricFamily]:
    """loraflow's own alerts, pending and firing (from the database: every worker's view)."""
    from loraflow.services.ops.alerts import active_alerts

    active = GaugeMetricFamily(
        "loraflow_alerts",
        "1 for each pending or firing alert of loraflow's own rules (GET /api/alerts).",
        labels=["rule", "target", "variant", "state"],
    )
    value = GaugeMetricFamily(
        "loraflow_alert_value",
        "The latest value of each pending or firing alert's rule (unit: the rule's).",
        labels=["rule", "target", "variant"],
    )
    for a in active_alerts(rt.db):
        labels = [a["rule"], a["target"], a["variant"] or ""]
        active.add_metric([*labels, a["state"]], 1)
        if a["last_value"] is not None:
            value.add_metric(labels, a["last_value"])
    yield active
    yield value


router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics of this process",
    include_in_schema=True,
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Any) -> None:
    """Attach the registry, the counting middleware, the gauges and the /metrics route."""
    m = Metrics()
    m.registry.register(RuntimeCollector(app))
    # process_cpu_seconds_total, process_resident_memory_bytes, ... of this worker.
    ProcessCollector(registry=m.registry)
    app.state.metrics = m
    app.add_middleware(MetricsMiddleware, metrics=m)
    app.include_router(router)
