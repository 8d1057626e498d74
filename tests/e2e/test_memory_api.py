"""Story memory over HTTP: projects, entries, supersede, limits, suggestions, export/import."""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.integration
BASE = "/api/memory"


def _project(client: httpx.Client, prefix: str = "story") -> str:
    r = client.post(f"{BASE}/projects", json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _add(client: httpx.Client, pid: str, **entry: object) -> dict:
    r = client.post(f"{BASE}/projects/{pid}/entries", json=entry)
    assert r.status_code == 201, r.text
    return r.json()


def test_project_and_entry_crud(client: httpx.Client) -> None:
    name = f"长夜-{uuid.uuid4().hex[:4]}"
    pid = client.post(f"{BASE}/projects", json={"name": name}).json()["id"]
    assert client.post(f"{BASE}/projects", json={"name": name}).status_code == 409
    assert client.get(f"{BASE}/projects/{name}").json()["id"] == pid
    e = _add(client, pid, kind="character", title="李明", content="一名剑客。", keywords=["李明"])
    assert (e["version"], e["current"], e["importance"]) == (1, True, 5)
    r = client.patch(f"{BASE}/projects/{pid}/entries/{e['entry_id']}", json={"importance": 8})
    assert r.json()["importance"] == 8 and r.json()["version"] == 1
    listed = client.get(f"{BASE}/projects/{pid}/entries").json()
    assert [x["title"] for x in listed["entries"]] == ["李明"]
    assert client.get(f"{BASE}/projects/{pid}").json()["entries"] == 1
    assert client.delete(f"{BASE}/projects/{pid}/entries/{e['entry_id']}").status_code == 200
    assert client.get(f"{BASE}/projects/{pid}/entries/{e['entry_id']}").status_code == 404
    assert client.delete(f"{BASE}/projects/{pid}").status_code == 200
    assert client.get(f"{BASE}/projects/{pid}").status_code == 404


def test_bad_input_gets_clear_errors(client: httpx.Client) -> None:
    pid = _project(client)
    url = f"{BASE}/projects/{pid}/entries"
    r = client.post(url, json={"kind": "monster", "title": "x", "content": "y"})
    assert r.status_code == 422 and "kind 'monster' is not one of" in r.json()["detail"]
    r = client.post(url, json={"kind": "note", "title": "x", "content": "y", "keywords": [""]})
    assert r.status_code == 422 and "keyword '' is empty" in r.json()["detail"]
    r = client.post(url, json={"kind": "note", "title": "x", "content": "y", "keywords": ["/(/"]})
    assert r.status_code == 422 and "regular expression" in r.json()["detail"]
    r = client.post(url, json={"kind": "note", "title": " ", "content": "y"})
    assert r.status_code == 422 and "title" in r.json()["detail"]
    r = client.get(f"{BASE}/projects/nope-{uuid.uuid4().hex}/entries")
    assert r.status_code == 404 and "no memory project" in r.json()["detail"]
    r = client.post(f"{BASE}/projects/{pid}/activate", json={"text": "   "})
    assert r.status_code == 422


def test_supersede_keeps_history_and_only_the_new_fact_is_activated(
    client: httpx.Client,
) -> None:
    pid = _project(client)
    bob = _add(client, pid, kind="character", title="Bob", content="Bob is a blacksmith.")
    r = client.post(
        f"{BASE}/projects/{pid}/entries/{bob['entry_id']}/supersede",
        json={"content": "Bob died in the fire.", "note": "chapter 3"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["version"], body["content"], body["note"]) == (
        2,
        "Bob died in the fire.",
        "chapter 3",
    )
    assert [h["current"] for h in body["history"]] == [False, True]
    all_versions = client.get(f"{BASE}/projects/{pid}/entries", params={"history": True}).json()
    assert all_versions["count"] == 2
    act = client.post(f"{BASE}/projects/{pid}/activate", json={"text": "Bob walked in."}).json()
    assert [(u["title"], u["version"]) for u in act["used"]] == [("Bob", 2)]
    # The dead blacksmith acting is a continuity flag.
    flags = client.post(f"{BASE}/projects/{pid}/continuity", json={"text": "Bob said hi."}).json()
    assert [f["rule"] for f in flags["flags"]] == ["dead_character_acts"]


def test_activation_order_and_budget_dropping(client: httpx.Client) -> None:
    pid = _project(client)
    _add(client, pid, kind="world", title="Rules", content="Magic costs memories.", always_on=True)
    _add(client, pid, kind="character", title="Mara", content="A smuggler.", importance=9)
    _add(client, pid, kind="character", title="Tobias", content="A fisherman.", importance=2)
    _add(client, pid, kind="plot_event", title="Storm", content="x " * 400, keywords=["storm"])
    text = "Tobias and Mara ran from the storm."
    act = client.post(f"{BASE}/projects/{pid}/activate", json={"text": text}).json()
    assert [u["title"] for u in act["used"]] == ["Rules", "Mara", "Storm", "Tobias"]
    assert [u["reason"] for u in act["used"]][:2] == ["always_on", "keyword"]
    small = client.post(
        f"{BASE}/projects/{pid}/activate", json={"text": text, "memory_budget": 40}
    ).json()
    assert [d["title"] for d in small["dropped"]] == ["Storm"]
    assert small["dropped"][0]["dropped_for"] == "budget"
    assert "Storm" not in [u["title"] for u in small["used"]]
    assert small["tokens_used"] <= 40


def test_chinese_suggestions_accept_and_reject(client: httpx.Client) -> None:
    pid = _project(client, "雪夜")
    text = "李明说：“我们今晚必须离开这座城。”张小红点头。"
    found = client.post(f"{BASE}/projects/{pid}/suggestions", json={"text": text}).json()
    by_title = {s["title"]: s for s in found["suggestions"]}
    assert {"李明", "张小红"} <= set(by_title)
    assert all(s["language"] == "zh" for s in found["suggestions"])
    sid = by_title["李明"]["id"]
    r = client.post(f"{BASE}/projects/{pid}/suggestions/{sid}/accept", json={"importance": 7})
    assert r.status_code == 201, r.text
    entry = r.json()["entry"]
    assert (entry["title"], entry["kind"], entry["importance"]) == ("李明", "character", 7)
    assert "今晚" in entry["content"]
    again = client.post(f"{BASE}/projects/{pid}/suggestions/{sid}/accept")
    assert again.status_code == 409 and "already accepted" in again.json()["detail"]
    rid = by_title["张小红"]["id"]
    assert client.post(f"{BASE}/projects/{pid}/suggestions/{rid}/reject").json()["status"] == (
        "rejected"
    )
    pending = client.get(f"{BASE}/projects/{pid}/suggestions", params={"status": "pending"})
    assert "张小红" not in [s["title"] for s in pending.json()["suggestions"]]


def test_export_import_round_trip_and_item_limit(client: httpx.Client) -> None:
    pid = _project(client)
    e = _add(client, pid, kind="character", title="Anna", content="The heroine.", chapter=1)
    client.post(f"{BASE}/projects/{pid}/entries/{e['entry_id']}/supersede", json={"title": "Hanna"})
    doc = client.get(f"{BASE}/projects/{pid}/export").json()
    assert doc["entries"][0]["title"] == "Hanna"
    assert doc["entries"][0]["history"][0]["title"] == "Anna"
    copy_name = f"copy-{uuid.uuid4().hex[:6]}"
    r = client.post(f"{BASE}/import", params={"name": copy_name}, json=doc)
    assert r.status_code == 201, r.text
    copied = client.get(f"{BASE}/projects/{copy_name}/entries").json()["entries"]
    assert [(c["title"], c["chapter"]) for c in copied] == [("Hanna", 1)]
    versions = client.get(f"{BASE}/projects/{copy_name}/entries", params={"history": True})
    assert [(v["title"], v["current"]) for v in versions.json()["entries"]] == [
        ("Anna", False),
        ("Hanna", True),
    ]
    bad = client.post(f"{BASE}/import", json={"format": "other"})
    assert bad.status_code == 422 and "not a loraflow memory export" in bad.json()["detail"]

    # MAX_MEMORY_ITEMS (1000 on this server): an import of 1000 fills the project, one more
    # entry is refused with 409, an import of 1001 is refused whole with 422.
    many = {
        **doc,
        "entries": [{"kind": "note", "title": f"n{i}", "content": "x"} for i in range(1000)],
    }
    full_name = f"full-{uuid.uuid4().hex[:6]}"
    assert client.post(f"{BASE}/import", params={"name": full_name}, json=many).status_code == 201
    r = client.post(
        f"{BASE}/projects/{full_name}/entries",
        json={"kind": "note", "title": "one", "content": "more"},
    )
    assert r.status_code == 409 and "limit of 1000 (MAX_MEMORY_ITEMS)" in r.json()["detail"]
    too_many = {
        **many,
        "entries": many["entries"] + [{"kind": "note", "title": "x", "content": "y"}],
    }
    r = client.post(f"{BASE}/import", params={"name": f"big-{uuid.uuid4().hex[:6]}"}, json=too_many)
    assert r.status_code == 422 and "1001 entries" in r.json()["detail"]
