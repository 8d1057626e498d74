"""Alert notifications to ALERT_WEBHOOK_URL: JSON POSTs from a background thread.

Requests never wait on it: events go into a bounded queue (the oldest waiting event is
dropped, and logged, when it is full) and one thread delivers them with retries and backoff.
With ALERT_WEBHOOK_SECRET the body is signed: `X-Loraflow-Signature: sha256=<hex>` is
HMAC-SHA256 of the exact body bytes, so a receiver can verify the sender.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from typing import Any

import httpx

log = logging.getLogger("loraflow.alerts")
SIGNATURE_HEADER = "X-Loraflow-Signature"
QUEUE_SIZE = 256


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    """Delivers alert events in order, each retried up to `retries` times."""

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        *,
        retries: int = 4,
        timeout: float = 5.0,
        backoff: float = 0.5,
    ) -> None:
        self.url, self.secret = url, secret
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="alert-webhook")
        self._thread.start()

    def notify(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks."""
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    old = self.queue.get_nowait()
                except queue.Empty:
                    continue
                self.dropped += 1
                log.warning("alert webhook queue full: dropped %s", _what(old))

    def close(self, wait: float = 5.0) -> None:
        """Deliver what is queued for up to `wait` seconds, then stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self._thread.join(wait)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                event = self.queue.get()
                if event is None:
                    return
                self._deliver(client, event)

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> None:
        body = json.dumps(event, default=str, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        for attempt in range(self.retries + 1):
            try:
                r = client.post(self.url, content=body, headers=headers)
                if r.status_code < 300:
                    self.sent += 1
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = str(exc) or type(exc).__name__
            if attempt == self.retries:
                break
            log.info("alert webhook: %s (%s); retry %d", _what(event), why, attempt + 1)
            # A stopping server still retries, but without the long waits.
            time.sleep(min(30.0, self.backoff * 2**attempt) * (0.1 if self._stop.is_set() else 1))
        self.failed += 1
        log.warning(
            "alert webhook gave up on %s after %d tries: %s", _what(event), attempt + 1, why
        )


def _what(event: dict[str, Any] | None) -> str:
    if not event:
        return "nothing"
    a = event.get("alert", {})
    return f"{event.get('event')} {a.get('rule')} {a.get('target')}/{a.get('variant') or '-'}"
