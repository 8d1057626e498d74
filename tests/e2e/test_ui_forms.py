"""The web UI's forms in a real browser: what a refused or failed action shows, and where.

A failure is told in the form's own status line, never as a toast: a toast floats over every
tab until closed and covers other tabs' forms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server
from tests.e2e.ui_browser import UI_ENV, fill, needs_chromium, no_error_toast, tab

pytestmark = [pytest.mark.integration, needs_chromium]
MANAGE_KBS = "Knowledge bases: create, rename, delete"


@pytest.fixture(scope="module")
def ui_server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, stopped_port: int
) -> Iterator[Server]:
    env = {
        **UI_ENV,
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
    }
    with start_server(tmp_path_factory.mktemp("ui-forms"), env, ("webui",)) as srv:
        yield srv


def uncovered(page: Any, selector: str) -> bool:
    """Whether a click at the element's centre reaches it (nothing is drawn over it)."""
    return page.locator(selector).evaluate(
        """el => {
            const r = el.getBoundingClientRect();
            return el.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2));
        }"""
    )


def test_failed_creates_are_told_in_place_and_leave_other_tabs_usable(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_text(MANAGE_KBS).click()
    fill(page, "kb-new-name", "no spaces allowed")
    page.locator("#kb-create").click()
    expect(page.locator("#kb-status")).to_contain_text("Create knowledge base failed: ")
    tab(page, "Assistants")
    page.locator("#assistants-create").click()
    expect(page.locator("#assistants-status")).to_contain_text("Create assistant failed: ")
    no_error_toast(page)

    tab(page, "Memory")
    create = "#memory-create-project"
    assert uncovered(page, create) and uncovered(page, "#memory-new-project")
    page.locator(create).click()
    status = page.locator("#memory-status")
    expect(status).to_contain_text("Create project failed: ")
    fill(page, "memory-new-project", "Harbour")
    page.locator(create).click()
    expect(status).to_contain_text("Created: Harbour")
    expect(page.locator("#memory-project input")).to_have_value("Harbour")
    no_error_toast(page)
