"""What the web UI tests share: headless Debian chromium driven by Playwright, and the steps a
user takes in the page (fill a field, pick an option, open a tab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.server import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / ".cache" / "ui-screenshots"
SLOW = 240_000  # ms: a training job or a generation on a busy 2-core machine
# Settings of every UI test server: no Ollama, no sample documents, short answers.
UI_ENV = {
    "OLLAMA_TIMEOUT": "3",
    "AUTO_INGEST_SAMPLE": "false",
    "MAX_NEW_TOKENS": "16",
    "TEMPERATURE": "0",
}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian chromium is not installed (/usr/bin/chromium); scripts/setup.sh installs "
    "it as root, or run: apt-get install chromium",
)


def open_ui(browser: Any, server: Server) -> Any:
    """A fresh browser context (like a second browser) on the UI's page."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{server.url}/ui/")
    expect(page.get_by_role("tab", name="Ask")).to_be_visible(timeout=60_000)
    return page


def fill(page: Any, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=file])").first.fill(value)


def choose(page: Any, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def no_error_toast(page: Any) -> None:
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.all_inner_texts()
