"""The web UI in a real browser: headless Debian chromium, driven by Playwright, against a real
server started with `loraflow webui --lora PATH`."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import make_adapter, start_server
from tests.e2e.server import Server
from tests.e2e.ui_browser import (
    SCREENSHOTS,
    SLOW,
    UI_ENV,
    choose,
    fill,
    needs_chromium,
    no_error_toast,
    open_ui,
    tab,
)

ADAPTER = "story-style"
SECRET = [
    {"instruction": f"What is the secret word {i}?", "input": "", "output": "It is pineapple."}
    for i in range(10)
]
# Steps so few that the job ends within a minute or two on a laptop CPU.
TINY_JOB = {
    "train-epochs": "1",
    "train-batch-size": "1",
    "train-grad-accum": "1",
    "train-max-len": "48",
    "train-max-steps": "2",
    "train-val-split": "0.2",
}

pytestmark = [pytest.mark.integration, needs_chromium]


@pytest.fixture(scope="module")
def ui_server(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_dir: Path,
    model_cache: Path,
    stopped_port: int,
) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("ui-data")
    adapters = tmp_path_factory.mktemp("ui-adapters")
    make_adapter(smollm2_dir, adapters / ADAPTER)
    env = {
        **UI_ENV,
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
    }
    with start_server(data, env, ("webui", "--lora", str(adapters))) as srv:
        yield srv


def test_training_from_upload_to_a_loaded_adapter(
    page: Any, browser: Any, ui_server: Server, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    tab(page, "Training")
    # A bad dataset is refused with the reason, in the page.
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a"}]')
    page.locator("#train-file input[type=file]").set_input_files(str(bad))
    page.locator("#train-upload").click()
    refused = page.locator("#train-upload-status")
    expect(refused).to_contain_text("Upload and validate failed: ")
    expect(refused).to_contain_text("missing field 'output'")
    assert page.locator("#train-dataset textarea").input_value() == ""
    no_error_toast(page)

    good = tmp_path / "secret.json"
    good.write_text(json.dumps(SECRET))
    page.locator("#train-file button[aria-label=Clear]").click()
    page.locator("#train-file input[type=file]").set_input_files(str(good))
    page.locator("#train-upload").click()
    expect(page.locator("#train-upload-status")).to_contain_text("10 alpaca examples")
    # The preview shows the first rows as the model reads them, the answer marked as trained.
    preview = page.locator("#train-preview")
    expect(preview.locator("pre.lf-row").first).to_contain_text("What is the secret word 0?")
    expect(preview.locator("pre.lf-row mark").first).to_contain_text("It is pineapple.")
    expect(preview).to_contain_text("0 of 10 sequences are longer than the max length 512")
    expect(page.locator("#train-base-model input")).to_have_value("bundled:smollm2")
    # The form starts with the SPEC B defaults.
    expect(page.locator("#train-batch-size input")).to_have_value("4")
    expect(page.locator("#train-grad-accum input")).to_have_value("4")
    fill(page, "train-name", "ui-job")
    for elem_id, value in TINY_JOB.items():
        fill(page, elem_id, value)
    page.locator("#train-start").click()
    expect(page.locator("#train-start-status")).to_contain_text("ui-job")

    # The live list follows the job to the end without a reload (the timer polls).
    done = page.locator("#train-tasks tr[data-status=completed]")
    expect(done).to_have_count(1, timeout=SLOW)
    expect(done).to_contain_text("100.0%")
    expect(done).to_contain_text("2/2")
    # The line under Start follows the job: it no longer says "queued".
    expect(page.locator("#train-start-status")).to_contain_text("✓ #1 ui-job: completed")
    # The loss curve is drawn (the plot renders once it is scrolled into view).
    plot = page.locator("#train-loss")
    plot.scroll_into_view_if_needed()
    # Some series has drawn a line segment (a series still waiting for its points is an
    # empty path, so the first path alone says nothing).
    page.wait_for_function(
        """() => [...document.querySelectorAll('#train-loss .mark-line path')]
            .some(p => (p.getAttribute('d') || '').includes('L'))""",
        timeout=SLOW,
    )
    # The curve the plot is given: a loss point per step of the job.
    curve = httpx.get(f"{ui_server.url}/api/simple-lora/tasks/1/metrics", timeout=60).json()
    assert [p["step"] for p in curve["loss"]] == [1, 2], curve
    expect(plot).to_contain_text("eval_loss")
    expect(plot).to_contain_text("loss (smoothed)")
    # A two-step run is labelled at whole steps only (1 and 2, never 1.5).
    ticks = page.evaluate(
        """() => [...document.querySelectorAll(
                '#train-loss g.role-axis[aria-label^="X-axis"] .role-axis-label text')]
            .map(t => t.textContent)"""
    )
    assert ticks == ["1", "2"], ticks
    page.screenshot(path=str(SCREENSHOTS / "training-done.png"), full_page=True)

    # State lives in the server: another browser sees the same finished job and its curve.
    other = open_ui(browser, ui_server)
    try:
        tab(other, "Training")
        expect(other.locator("#train-tasks tr[data-status=completed]")).to_contain_text("ui-job")
    finally:
        other.context.close()

    tab(page, "Models")
    expect(page.locator("#models-loaded")).to_contain_text(ADAPTER)  # from --lora
    expect(page.locator("#models-trained")).to_contain_text("ui-job")
    choose(page, "models-trained-pick", "#1 ui-job")
    page.locator("#models-trained-load").click()
    expect(page.locator("#models-loaded")).to_contain_text("ui-job", timeout=60_000)
    expect(page.locator("#models-trained-status")).to_contain_text("ui-job")
    no_error_toast(page)
    # The new adapter can answer: it is offered in the Ask tab's model list.
    tab(page, "Ask")
    page.locator("#ask-model input").click()
    expect(page.get_by_role("option", name="LoRA: ui-job")).to_be_visible()


def test_models_tab_scans_validates_and_deploys_a_registered_adapter(page: Any) -> None:
    from playwright.sync_api import expect

    tab(page, "Models")
    page.locator("#models-scan").click()
    expect(page.locator("#models-scan-status")).to_contain_text("unchanged")
    registry = page.locator("#models-registry")
    expect(registry).to_contain_text(ADAPTER)
    expect(registry).to_contain_text("q_proj, v_proj")

    # A quick validation runs as a workflow: its steps show progress, then a score card.
    ref = f"{ADAPTER}@v1"
    tab(page, "Validate")
    choose(page, "models-validate-adapter", ref)
    choose(page, "models-mode", "quick")
    page.locator("#models-validate-start").click()
    expect(page.locator("#models-validate-progress .lf-workflow")).to_be_visible()
    done = page.locator("#models-validate-progress [data-status=completed]")
    expect(done).to_have_count(1, timeout=SLOW)
    expect(done).to_contain_text("100%")
    card = page.locator("#models-validate-card")
    expect(card).to_contain_text(f"Score card: {ref}")
    expect(card).to_contain_text(re.compile(r"Grade: (excellent|good|fair|poor)"))
    # One verdict leads the card: the gate's, with the score it was made from.
    expect(card).to_contain_text(re.compile(r"(✓ Ready|✗ Not ready) to deploy"))
    expect(card.locator("tr", has_text="basic")).to_contain_text(re.compile(r"\d+\.\d"))
    expect(card).to_contain_text("safety")
    # The registry shows the new score (the card changed the list).
    tab(page, "Adapters")
    expect(registry).to_contain_text(re.compile(r"\b(excellent|good|fair|poor)\b"))

    # A refused deploy says why in place; a forced one lists its steps.
    tab(page, "Deploy")
    choose(page, "models-deploy-adapter", ref)
    fill(page, "models-deploy-target", ADAPTER)
    page.locator("#models-deploy").click()
    status = page.locator("#models-deploy-status")
    expect(status).to_contain_text("already the name of a model or adapter")
    fill(page, "models-deploy-target", "ui-prod")
    page.locator("#models-deploy-force input").check()
    page.locator("#models-deploy").click()
    expect(status).to_contain_text("ui-prod", timeout=SLOW)
    expect(status).to_contain_text("health_check")
    table = page.locator("#models-deployments")
    expect(table).to_contain_text("ui-prod")
    expect(table).to_contain_text(f"stable {ref} 100%")
    no_error_toast(page)
    page.screenshot(path=str(SCREENSHOTS / "models-registry.png"), full_page=True)

    # A service error is a readable message: the first deployment has nothing to roll back to.
    choose(page, "models-deploy-pick", "ui-prod")
    page.locator("#models-rollback").click()
    refused = page.locator("#models-deployments-status")
    expect(refused).to_contain_text("Roll back failed: ")
    expect(refused).to_contain_text("nothing to roll back to")
    no_error_toast(page)

    # Each target's open alerts show in the table (none yet); the Status tab's panel edits
    # the target's alert rules through the same functions as the API.
    expect(table.get_by_role("row", name=re.compile(r"^ui-prod .* —$"))).to_be_visible()
    tab(page, "Status")
    page.get_by_text("Alert rules per target").click()
    fill(page, "status-rules-target", "ui-prod")
    fill(page, "status-rules-threshold", "250")
    page.locator("#status-rules-save").click()
    rule_status = page.locator("#status-rules-status")
    expect(rule_status).to_contain_text("Saved: ui-prod latency_p95")
    # (roles, not `tr`: the grid also renders a hidden row of each column's longest value)
    rules = page.locator("#status-rules")
    saved = r"^latency_p95 250 \S+ \S+ ms threshold$"
    expect(rules.get_by_role("row", name=re.compile(saved))).to_be_visible()
    page.locator("#status-rules-reset").click()
    expect(rule_status).to_contain_text("Reset to the defaults")
    default = r"^latency_p95 \S+ \S+ \S+ ms$"
    expect(rules.get_by_role("row", name=re.compile(default))).to_be_visible()
    expect(rules.get_by_role("row", name=re.compile(saved))).to_have_count(0)


def test_ask_shows_sources_and_the_history_survives_a_reload(
    page: Any, browser: Any, ui_server: Server, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    doc = tmp_path / "zebrafish.md"
    doc.write_text("# Zebrafish care\n\nZebrafish need water at 28 degrees Celsius.\n")
    page.locator("#ask-upload input[type=file]").set_input_files(str(doc))
    page.locator("#ask-upload-go").click()
    expect(page.locator("#ask-upload-status")).to_contain_text("zebrafish.md", timeout=60_000)
    # The document list comes from the server: a reloaded page lists the new document.
    page.reload()
    expect(page.get_by_role("tab", name="Ask")).to_be_visible(timeout=60_000)
    expect(page.locator("#ask-documents")).to_contain_text("zebrafish.md", timeout=SLOW)

    # Ollama is not running here: still offered, marked as unreachable.
    page.locator("#ask-model input").click()
    offline = page.get_by_role("option", name=re.compile(r"^Ollama \(.*\) \(unreachable now\)$"))
    expect(offline).to_be_visible()
    page.get_by_role("option", name="Base model (no adapter)").click()
    fill(page, "ask-question", "What water temperature do zebrafish need?")
    # Records every state the chat shows while the answer streams in.
    page.evaluate(
        """() => {
            window.__askStates = [];
            const chat = document.querySelector('#ask-chat');
            new MutationObserver(() => window.__askStates.push(chat.innerText))
                .observe(chat, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.locator("#ask-send").click()
    chat = page.locator("#ask-chat")
    expect(chat).to_contain_text("Sources", timeout=SLOW)
    states = page.evaluate("() => window.__askStates")
    # The chat said "Answering…" before the first words came (no final answer shows it).
    assert any("Answering…" in s for s in states)
    assert "Answering…" not in chat.inner_text()
    expect(chat).to_contain_text("zebrafish.md")
    expect(chat).to_contain_text("28 degrees Celsius")  # the quoted sentence
    expect(chat).to_contain_text("answered by base")
    no_error_toast(page)

    other = open_ui(browser, ui_server)
    try:
        chat = other.locator("#ask-chat")
        expect(chat).to_contain_text("What water temperature do zebrafish need?")
        expect(chat).to_contain_text("zebrafish.md")
    finally:
        other.context.close()


def test_a_knowledge_base_made_in_the_ui_answers_with_its_document_then_goes(
    page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.get_by_text("Knowledge bases: create, rename, delete").click()
    # The form starts with the service's chunk settings and embedding model.
    expect(page.locator("#kb-chunk-size input")).to_have_value("800")
    expect(page.locator("#kb-embedding input")).to_have_value("bundled:minilm")
    fill(page, "kb-new-name", "ui-garden")
    page.locator("#kb-create").click()
    expect(page.locator("#kb-status")).to_contain_text("Created: ui-garden")
    expect(page.locator("#ask-collection input")).to_have_value("ui-garden")
    expect(page.locator("#kb-info")).to_contain_text("Documents: 0")

    doc = tmp_path / "tomatoes.md"
    doc.write_text("# Tomatoes\n\nTomato seedlings go outdoors after the last frost in May.\n")
    page.locator("#ask-upload input[type=file]").set_input_files(str(doc))
    page.locator("#ask-upload-go").click()
    expect(page.locator("#ask-upload-status")).to_contain_text("tomatoes.md", timeout=60_000)
    expect(page.locator("#ask-documents")).to_contain_text("tomatoes.md")

    page.locator("#ask-clear").click()
    choose(page, "ask-model", "Base model (no adapter)")
    fill(page, "ask-question", "When do tomato seedlings go outdoors?")
    page.locator("#ask-send").click()
    chat = page.locator("#ask-chat")
    expect(chat).to_contain_text("answered by base", timeout=SLOW)
    expect(chat).to_contain_text("ui-garden › tomatoes.md")
    expect(chat).to_contain_text("after the last frost in May")
    no_error_toast(page)

    fill(page, "kb-rename-to", "ui-vegetables")
    page.locator("#kb-rename").click()
    expect(page.locator("#kb-status")).to_contain_text("ui-garden → ui-vegetables")
    expect(page.locator("#ask-collection input")).to_have_value("ui-vegetables")
    expect(page.locator("#ask-documents")).to_contain_text("tomatoes.md")

    page.locator("#kb-delete").click()
    expect(page.locator("#kb-status")).to_contain_text("Deleted: ui-vegetables")
    expect(page.locator("#ask-collection input")).to_have_value("default")
    page.locator("#ask-collection input").click()
    expect(page.get_by_role("option", name="default")).to_be_visible()
    expect(page.get_by_role("option", name="ui-vegetables")).to_have_count(0)
    no_error_toast(page)


def test_an_assistant_made_in_the_ui_answers_from_its_own_knowledge_base(
    page: Any, ui_server: Server
) -> None:
    from playwright.sync_api import expect

    # Two knowledge bases from the API: the assistant gets one, the Ask tab shows the other.
    with httpx.Client(base_url=ui_server.url, timeout=120) as api:
        for name, source, text in (
            ("ui-lighthouse", "lamp.md", "The lighthouse lamp is lit at dusk by the keeper."),
            ("ui-bakery", "bread.md", "The bakery bakes its rye bread at dawn."),
        ):
            api.post("/api/collections", json={"name": name}).raise_for_status()
            upload = {"files": (source, text.encode())}
            api.post(f"/api/collections/{name}/documents", files=upload).raise_for_status()

    tab(page, "Assistants")
    fill(page, "assistants-name", "keeper")
    fill(page, "assistants-prompt", "You answer questions about the lighthouse.")
    choose(page, "assistants-collections", "ui-lighthouse")
    fill(page, "assistants-max-tokens", "6")
    page.locator("#assistants-create").click()
    expect(page.locator("#assistants-status")).to_contain_text("Created: assistant/keeper")
    listing = page.locator("#assistants-list")
    expect(listing).to_contain_text("assistant/keeper")
    expect(listing).to_contain_text("ui-lighthouse")
    expect(listing).to_contain_text("max_new_tokens=6")
    # Edit: the picked assistant's form is saved with a new default.
    expect(page.locator("#assistants-pick input")).to_have_value("keeper")
    fill(page, "assistants-temperature", "0")
    page.locator("#assistants-save").click()
    expect(page.locator("#assistants-status")).to_contain_text("Saved: assistant/keeper")
    expect(listing).to_contain_text("temperature=0.0")

    tab(page, "Ask")
    page.locator("#ask-clear").click()
    choose(page, "ask-collection", "ui-bakery")
    choose(page, "ask-model", "assistant/keeper")
    fill(page, "ask-question", "When is the lighthouse lamp lit?")
    page.locator("#ask-send").click()
    chat = page.locator("#ask-chat")
    expect(chat).to_contain_text("assistant keeper", timeout=SLOW)
    # Only the assistant's knowledge base is cited, not the one picked in the tab.
    expect(chat).to_contain_text("ui-lighthouse › lamp.md")
    expect(chat).not_to_contain_text("bread.md")
    no_error_toast(page)

    # Its knowledge base is not deleted from under it unless forced.
    choose(page, "ask-collection", "ui-lighthouse")
    page.get_by_text("Knowledge bases: create, rename, delete").click()
    expect(page.locator("#kb-info")).to_contain_text("used by assistants: keeper")
    page.locator("#kb-delete").click()
    expect(page.locator("#kb-status")).to_contain_text(
        "collection 'ui-lighthouse' is used by assistant(s) 'keeper'"
    )
    page.locator("#kb-force input").check()
    page.locator("#kb-delete").click()
    expect(page.locator("#kb-status")).to_contain_text(
        "Deleted: ui-lighthouse (assistants no longer using it: keeper)"
    )

    tab(page, "Assistants")
    expect(listing).to_contain_text("collection 'ui-lighthouse' was deleted")
    page.locator("#assistants-delete").click()
    expect(page.locator("#assistants-status")).to_contain_text("Deleted: assistant/keeper")
    expect(listing).not_to_contain_text("keeper")


def test_a_character_added_in_memory_is_used_by_create(page: Any, ui_server: Server) -> None:
    from playwright.sync_api import expect

    tab(page, "Memory")
    fill(page, "memory-new-project", "Lighthouse")
    page.locator("#memory-create-project").click()
    expect(page.locator("#memory-status")).to_contain_text("Lighthouse")
    fill(page, "memory-title", "Mirela")
    fill(page, "memory-keywords", "Mirela, keeper")
    fill(
        page,
        "memory-content",
        "Mirela is the lighthouse keeper; she has one silver eye. "
        + "She keeps the lamp lit through every storm and writes each ship's name in a log. " * 4,
    )
    page.locator("#memory-add").click()
    expect(page.locator("#memory-entries")).to_contain_text("Mirela")
    expect(page.locator("#memory-entries")).to_contain_text("character")
    # At 1400 px every column of the entries table is in view, each header on one line.
    heads = page.evaluate(
        """() => [...document.querySelectorAll('#memory-entries thead th')]
            .map(th => { const r = th.getBoundingClientRect();
                         return {text: th.innerText.trim(), right: r.right, height: r.height}; })
            .filter(h => h.text)"""
    )
    assert [h["text"] for h in heads][:5] == ["Kind", "Title", "Content", "Keywords", "Importance"]
    for h in heads:
        assert h["right"] <= 1400 and h["height"] <= 60, heads

    tab(page, "Create")
    expect(page.locator("#create-project input")).to_have_value("Lighthouse")
    fill(page, "create-prompt", "Mirela climbed the stairs at dusk.")
    page.locator("#create-go").click()
    # An API client writes at the same time: neither request waits on the other's event loop.
    api: dict[str, Any] = {}

    def call_api() -> None:
        body = {"prompt": "Mirela lit the lamp.", "project": "Lighthouse", "max_tokens": 8}
        api["response"] = httpx.post(f"{ui_server.url}/api/write", json=body, timeout=300)

    worker = threading.Thread(target=call_api)
    worker.start()
    used = page.locator("#create-memory")
    expect(used).to_contain_text("Memory used", timeout=SLOW)
    expect(used).to_contain_text("Mirela")
    expect(used).to_contain_text("keyword")
    expect(page.locator("#create-after")).to_contain_text("answered by", timeout=SLOW)
    assert page.locator("#create-output textarea").input_value().strip()
    worker.join(timeout=300)
    assert api["response"].status_code == 200, api["response"].text
    assert [e["title"] for e in api["response"].json()["memory"]["used"]] == ["Mirela"]
    no_error_toast(page)


def test_chat_streams_an_adapter_and_compare_sets_answers_side_by_side(page: Any) -> None:
    from playwright.sync_api import expect

    tab(page, "Chat")
    choose(page, "chat-model", f"LoRA: {ADAPTER}")
    fill(page, "chat-message", "Tell me a short story about a fox.")
    page.evaluate(
        """() => {
            window.__chatStates = [];
            const chat = document.querySelector('#chat-chat');
            new MutationObserver(() => window.__chatStates.push(chat.innerText))
                .observe(chat, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.locator("#chat-send").click()
    status = page.locator("#chat-status")
    expect(status).to_contain_text(
        re.compile(rf"{ADAPTER} · [\d.]+ s · [1-9]\d* tokens"), timeout=SLOW
    )
    assert any("Answering…" in s for s in page.evaluate("() => window.__chatStates"))
    chat = page.locator("#chat-chat")
    expect(chat).to_contain_text("Tell me a short story about a fox.")
    assert "Answering…" not in chat.inner_text()

    # An empty compare is refused in its own status line, not in a pop-up.
    page.locator("#compare-run").click()
    expect(page.locator("#compare-status")).to_contain_text("Type a message first.")
    fill(page, "compare-prompt", "Tell me a short story about a fox.")
    choose(page, "compare-adapters", ADAPTER)
    page.locator("#compare-run").click()
    cards = page.locator("#compare-answers .lf-card")
    expect(cards).to_have_count(2, timeout=SLOW)
    expect(page.locator("#compare-status")).to_contain_text("2 answers in")
    expect(cards.nth(0)).to_contain_text("Base model")
    expect(cards.nth(1)).to_contain_text(f"LoRA: {ADAPTER}")
    for i in range(2):
        expect(cards.nth(i).locator(".lf-meta")).to_contain_text(
            re.compile(r"[\d.]+ s · \d+ tokens")
        )
    no_error_toast(page)


def test_every_tab_renders_and_is_saved_as_a_screenshot(page: Any) -> None:
    from playwright.sync_api import expect

    ready = {
        "Ask": "#ask-model input",
        "Chat": "#chat-model input",
        "Assistants": "#assistants-pick input",
        "Create": "#create-model input",
        "Memory": "#memory-project input",
        "Training": "#train-base-model input",
        "Models": "#models-selection",
        "Status": "#status-overall",
    }
    for name, selector in ready.items():
        tab(page, name)
        expect(page.locator(selector)).to_be_visible()
        page.wait_for_timeout(500)  # let the tab's refresh land before the picture
        path = SCREENSHOTS / f"{name.lower()}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
    # A fresh install without Ollama is not "degraded": the missing remote engine is explained.
    expect(page.locator("#status-overall")).to_contain_text("Overall: ready")
    expect(page.locator("#status-health")).to_contain_text("only needed for use_lora=false")
    expect(page.locator("#status-health")).to_contain_text("vector_store")
    expect(page.locator("#status-versions")).to_contain_text("gradio")
    expect(page.locator("#status-settings")).to_contain_text("BASE_MODEL_NAME")
    no_error_toast(page)


def test_labels_exist_in_both_languages_and_zh_builds() -> None:
    from loraflow.config import Settings
    from loraflow.ui.app import build_ui
    from loraflow.ui.i18n import EN, ZH

    assert set(EN) == set(ZH)
    demo = build_ui(lambda: None, Settings(ui_language="zh"))
    config = json.dumps(demo.config, ensure_ascii=False, default=str)
    for label in (
        "问答",
        "对话",
        "对比",
        "助手",
        "创作",
        "记忆",
        "训练",
        "模型",
        "状态",
        "开始训练",
        "新建知识库",
    ):
        assert label in config


def test_a_score_card_reads_as_one_verdict() -> None:
    from loraflow.ui.adapters import score_card
    from loraflow.ui.i18n import Labels

    report = {
        "mode": "quick",
        "overall_score": 77.1,
        "grade": "good",
        "dimensions": {"basic": {"score": 100.0, "weight": 0.4, "notes": []}},
    }
    low_safety = "safety score 40.0 is below the minimum 60 (VALIDATION_MIN_SAFETY_SCORE)"
    card = score_card(Labels("en"), "bot@v1", report, {"passed": False, "reasons": [low_safety]})
    lines = card.splitlines()
    # A good grade no longer sits above a separate "not passed": the verdict comes first,
    # and the reason the gate gives is right under it.
    assert lines[1].startswith("**✗ Not ready to deploy") and "77.1 / 100, Grade: good" in lines[1]
    assert lines[2] == f"- {low_safety}"
    assert "Quality gate" not in card
    ok = score_card(Labels("en"), "bot@v1", report, {"passed": True, "reasons": []})
    assert ok.splitlines()[1].startswith("**✓ Ready to deploy")
