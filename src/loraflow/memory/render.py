"""How memory entries are written into a prompt, in the language of the story."""

from __future__ import annotations

from loraflow.memory.entries import MemoryEntry

KIND_LABELS = {
    "en": {
        "character": "Character",
        "plot_event": "Plot event",
        "world": "World",
        "dialogue": "Key dialogue",
        "note": "Note",
    },
    "zh": {
        "character": "人物",
        "plot_event": "情节",
        "world": "世界设定",
        "dialogue": "关键对白",
        "note": "备注",
    },
}
HEADERS = {
    "en": "Story memory (facts to keep consistent):",
    "zh": "故事记忆（续写时须保持一致的设定）：",
}


def entry_line(entry: MemoryEntry, language: str = "en") -> str:
    """One prompt line for an entry, e.g. `- [Character] Alice: a lighthouse keeper`."""
    label = KIND_LABELS.get(language, KIND_LABELS["en"])[entry.kind]
    if language == "zh":
        return f"- 【{label}】{entry.title}：{entry.content}"
    return f"- [{label}] {entry.title}: {entry.content}"


def memory_block(entries: list[MemoryEntry], language: str = "en") -> str:
    """The memory section of a prompt; empty when no entry is used."""
    if not entries:
        return ""
    lines = [HEADERS.get(language, HEADERS["en"])]
    lines.extend(entry_line(e, language) for e in entries)
    return "\n".join(lines)
