"""The web UI's forms in a real browser: what a refused or failed action shows, and where.

A failure is told in the form's own status line, never as a toast: a toast floats over every
tab until closed and covers other tabs' forms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server
from tests.e2e.ui_browser import UI_ENV, choose, fill, needs_chromium, no_error_toast, tab

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


@pytest.fixture()
def api(ui_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ui_server.url, timeout=120) as client:
        yield client


def uncovered(page: Any, selector: str) -> bool:
    """Whether a click at the element's centre reaches it (nothing is drawn over it)."""
    return page.locator(selector).evaluate(
        """el => {
            const r = el.getBoundingClientRect();
            return el.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2));
        }"""
    )


def test_the_knowledge_base_form_refuses_bad_chunk_settings_in_place(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_text(MANAGE_KBS).click()
    fill(page, "kb-new-name", "ui-chunks")
    status = page.locator("#kb-status")
    size_rule = "Chunk size (characters) must be a whole number from 50 to 20000"
    overlap_rule = "Chunk overlap must be a whole number from 0 to 799, less than the chunk size"
    # A cleared field, zero, negative and absurd values: each refused with the rule, in place.
    for size, overlap, said in (
        ("0", "120", f"{size_rule}; it is 0"),
        ("", "120", f"{size_rule}; it is empty"),
        ("-5", "120", f"{size_rule}; it is -5"),
        ("1000000", "120", f"{size_rule}; it is 1000000"),
        ("800", "900", f"{overlap_rule}; it is 900"),
        ("800", "", f"{overlap_rule}; it is empty"),
    ):
        page.locator("#kb-chunk-size input").fill(size)
        page.locator("#kb-chunk-overlap input").fill(overlap)
        page.locator("#kb-create").click()
        expect(status).to_contain_text(f"Create knowledge base failed: {said}")
        # Nothing was made, and the form keeps what was typed for the correction.
        expect(page.locator("#ask-collection input")).to_have_value("default")
        expect(page.locator("#kb-new-name textarea")).to_have_value("ui-chunks")
    no_error_toast(page)

    page.locator("#kb-chunk-size input").fill("400")
    page.locator("#kb-chunk-overlap input").fill("40")
    page.locator("#kb-create").click()
    expect(status).to_contain_text("Created: ui-chunks")
    expect(status).to_contain_text("Chunk size (characters) 400 / Chunk overlap 40")
    expect(page.locator("#ask-collection input")).to_have_value("ui-chunks")


def test_a_knowledge_base_in_use_is_refused_naming_the_checkbox(
    page: Any, api: httpx.Client
) -> None:
    from playwright.sync_api import expect

    api.post("/api/collections", json={"name": "ui-atlas"}).raise_for_status()
    body = {"name": "navigator", "collections": ["ui-atlas"]}
    api.post("/api/assistants", json=body).raise_for_status()
    page.reload()
    choose(page, "ask-collection", "ui-atlas")
    page.get_by_text(MANAGE_KBS).click()
    page.locator("#kb-delete").click()
    status = page.locator("#kb-status")
    expect(status).to_contain_text(
        "Delete knowledge base failed: collection 'ui-atlas' is used by assistant(s) "
        "'navigator' (remove it from those assistants first, or tick “Delete even if "
        "assistants use it” and press “Delete knowledge base” again)"
    )
    expect(status).not_to_contain_text("force=true")
    # The hint names the checkbox as the page labels it; ticked, the delete goes through.
    page.get_by_label("Delete even if assistants use it").check()
    page.locator("#kb-delete").click()
    expect(status).to_contain_text("Deleted: ui-atlas (assistants no longer using it: navigator)")
    no_error_toast(page)


def test_ask_says_whose_knowledge_bases_an_assistant_answers_from(
    page: Any, api: httpx.Client
) -> None:
    from playwright.sync_api import expect

    for name in ("ui-maps", "ui-tides"):
        api.post("/api/collections", json={"name": name}).raise_for_status()
    for body in (
        {"name": "pilot", "collections": ["ui-maps", "ui-tides"]},
        {"name": "chatter", "collections": []},
    ):
        api.post("/api/assistants", json=body).raise_for_status()
    page.reload()
    note, chunks = page.locator("#ask-assistant-note"), page.locator("#ask-top-k input")
    expect(note).to_have_text("")
    expect(chunks).to_be_enabled()

    choose(page, "ask-model", "assistant/pilot")
    expect(note).to_have_text(
        "assistant/pilot answers from its own knowledge bases: ui-maps, ui-tides, with its own "
        "chunk count. The knowledge base picked here only chooses the documents listed below."
    )
    expect(chunks).to_be_disabled()
    choose(page, "ask-model", "assistant/chatter")
    expect(note).to_contain_text("assistant/chatter has no knowledge base")
    expect(chunks).to_be_disabled()
    choose(page, "ask-model", "Current default: Base model (no adapter)")
    expect(note).to_have_text("")
    expect(chunks).to_be_enabled()
    no_error_toast(page)


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
    page.get_by_text("Export / import").click()
    page.locator("#memory-export").click()  # no project yet
    expect(status).to_contain_text("Export as JSON failed: ")
    fill(page, "memory-new-project", "Harbour")
    page.locator(create).click()
    expect(status).to_contain_text("Created: Harbour")
    expect(page.locator("#memory-project input")).to_have_value("Harbour")
    no_error_toast(page)


def test_ask_and_create_failures_are_told_under_their_own_form(page: Any) -> None:
    from playwright.sync_api import expect

    tab(page, "Ask")
    page.locator("#ask-upload-go").click()  # no file chosen
    expect(page.locator("#ask-upload-status")).to_contain_text("Upload and ingest failed: ")
    page.locator("#ask-send").click()  # an empty question
    status = page.locator("#ask-status")
    expect(status).to_contain_text("Ask failed: ")
    # The chat is left as it was: no unanswered question was added.
    assert "Answering" not in page.locator("#ask-chat").inner_text()
    no_error_toast(page)

    tab(page, "Create")
    page.locator("#tab-create").get_by_text("Parameters", exact=True).click()
    page.locator("#tab-create").get_by_label("Seed").fill("twelve")
    fill(page, "create-prompt", "The ship left at dawn.")
    page.locator("#create-go").click()
    expect(page.locator("#create-after")).to_contain_text("Generate failed: ")
    expect(page.locator("#create-after")).to_contain_text("'twelve' is not a whole number")
    no_error_toast(page)


def test_the_chinese_ui_speaks_chinese_gradio_strings_included(
    browser: Any, tmp_path: Path, model_cache: Path, stopped_port: int
) -> None:
    from playwright.sync_api import expect

    from tests.e2e.ui_browser import SCREENSHOTS

    env = {
        **UI_ENV,
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "UI_LANGUAGE": "zh",
        "LOAD_LOCAL_MODEL": "false",
    }
    with start_server(tmp_path / "zh", env, ("webui",)) as srv:
        # An English browser: the page follows UI_LANGUAGE, not the browser's language.
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
        try:
            page = context.new_page()
            page.goto(f"{srv.url}/ui/")
            expect(page.get_by_role("tab", name="问答")).to_be_visible(timeout=60_000)
            expect(page.locator("footer")).to_contain_text("通过 API 使用")  # Gradio's own
            page.get_by_role("tab", name="状态").click()
            expect(page.locator("#status-overall")).to_contain_text("总体")
            health = page.locator("#status-health")
            expect(health).to_contain_text("个文档")
            expect(health).to_contain_text("无法连接 http://127.0.0.1:")
            assert "documents" not in health.inner_text()
            page.screenshot(path=str(SCREENSHOTS / "status-zh.png"), full_page=True)
        finally:
            context.close()


def test_models_failures_are_told_in_their_own_sub_tab(page: Any) -> None:
    from playwright.sync_api import expect

    tab(page, "Models")
    page.locator("#models-unload").click()  # no adapter picked
    expect(page.locator("#models-loaded-status")).to_contain_text("Unload failed: ")
    fill(page, "models-load-name", "x")
    page.locator("#models-load").click()  # no folder
    expect(page.locator("#models-loaded-status")).to_contain_text("Load folder failed: ")
    tab(page, "Merge")
    page.locator("#models-merge-start").click()  # fewer than two adapters
    expect(page.locator("#models-merge-result")).to_contain_text("Start merge failed: ")
    tab(page, "Export")
    page.locator("#models-export-start").click()
    expect(page.locator("#models-export-result")).to_contain_text("Start export failed: ")
    no_error_toast(page)
