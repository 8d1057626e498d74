"""Continuity check: flag generated text that contradicts the stored facts (heuristics only).

Rules, each needing a name the memory knows (an entry's title or plain keywords):
- dead_character_acts: an entry says a character died (died, was killed, 死了, 去世, 身亡...)
  and the new text has that name in a sentence with a speech or action verb (said, walked,
  说, 笑...) and no word of memory, dreams or ghosts (remembered, ghost, 回忆, 梦...);
- relation_changed: the memory says "A is B's sister" / "A是B的妹妹" and the text states
  another relation for the same pair;
- place_changed: the memory says "A lives in X" / "A住在X" and the text says A lives elsewhere;
- outdated_name: the text uses a title that a superseded version had but the current one
  does not (a renamed character, a moved capital).
Limits: no coreference ("he", "她" are not resolved), no negation or tense ("if Bob had
lived"), relations and places only in these sentence shapes. Notes follow the text's
language. A model-based check is not implemented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loraflow.memory.entries import MemoryEntry
from loraflow.memory.language import language_of
from loraflow.memory.triggers import find_keyword

_DEATH = re.compile(
    r"\b(died|dies|is dead|was killed|was murdered|passed away|deceased)\b|"
    r"死了|已死|去世|身亡|遇害|牺牲|被杀|死去|阵亡|过世"
)
_ACTS = re.compile(
    r"\b(said|says|asked|asks|replied|smiled|smiles|laughed|walked|walks|nodded|shouted|"
    r"whispered|ran|runs|opened|looked)\b|说|道|问|笑|走|点头|喊|答|跑|看着"
)
_NOT_ALIVE = re.compile(
    r"\b(remember\w*|recall\w*|memor\w*|ghost|grave|funeral|dream\w*|late|corpse|body|"
    r"portrait|spirit)\b|回忆|想起|记得|鬼|坟|墓|梦|生前|遗|灵|尸"
)
_EN_REL = (
    "sister|brother|father|mother|son|daughter|wife|husband|friend|enemy|teacher|student|"
    "master|apprentice|uncle|aunt|cousin|fiancee|fiance|lover|rival|servant|king|queen"
)
_ZH_REL = (
    "妹妹|姐姐|哥哥|弟弟|父亲|母亲|儿子|女儿|妻子|丈夫|师父|徒弟|朋友|敌人|师兄|师姐|师弟|师妹|"
    "叔叔|舅舅|表哥|表妹|未婚妻|未婚夫|恋人|仇人|爷爷|奶奶"
)
_SENTENCE = re.compile(r"[^。！？!?.\n]+[。！？!?.]*[”」’\"]*")


@dataclass
class ContinuityFlag:
    """One likely contradiction, with the sentence and the entry it contradicts."""

    rule: str
    message: str
    sentence: str
    entry_id: str
    entry_title: str


def _sentences(text: str) -> list[str]:
    return [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]


def _mentions(name: str, sentence: str) -> bool:
    return find_keyword(name, sentence) is not None


def _alt(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def _dead(entries: list[MemoryEntry], characters: dict[str, MemoryEntry]) -> dict[str, MemoryEntry]:
    """Name -> the entry that records the death."""
    dead: dict[str, MemoryEntry] = {}
    for e in entries:
        for s in _sentences(e.content):
            m = _DEATH.search(s)
            if not m:
                continue
            named = [n for n in characters if _mentions(n, s[: m.start()])]
            if not named and e.kind == "character":
                named = e.names()
            for n in named:
                dead.setdefault(n, e)
    return dead


def _relations(text: str, names: list[str]) -> list[tuple[str, str, str, str]]:
    """(a, b, relation, sentence) stated in `text` among known names."""
    if not names:
        return []
    alt = _alt(names)
    en = re.compile(rf"({alt}) (?:is|was|became) ({alt})'s ({_EN_REL})\b", re.IGNORECASE)
    zh = re.compile(rf"({alt})(?:是|成了|成为)({alt})的({_ZH_REL})")
    out: list[tuple[str, str, str, str]] = []
    for s in _sentences(text):
        for pat in (en, zh):
            out.extend((m.group(1), m.group(2), m.group(3).lower(), s) for m in pat.finditer(s))
    return out


def _places(text: str, names: list[str]) -> list[tuple[str, str, str]]:
    """(name, place, sentence) for "A lives in X" / "A住在X"."""
    if not names:
        return []
    alt = _alt(names)
    en = re.compile(rf"({alt}) (?:lives|lived|live) in ((?:the )?[A-Z][\w-]*(?: [A-Z][\w-]*)*)")
    zh = re.compile(rf"({alt})(?:住在|居住在|生活在)([^，。！？、\s]{{2,8}})")
    out: list[tuple[str, str, str]] = []
    for s in _sentences(text):
        for pat in (en, zh):
            out.extend((m.group(1), m.group(2), s) for m in pat.finditer(s))
    return out


def check(
    text: str, entries: list[MemoryEntry], history: list[MemoryEntry] | None = None
) -> list[ContinuityFlag]:
    """Flags for `text` against current `entries` (and superseded versions in `history`)."""
    zh = language_of(text) == "zh"
    current = [e for e in entries if e.current]
    characters = {n: e for e in current if e.kind == "character" for n in e.names()}
    names = list({n for e in current for n in e.names()})
    flags: list[ContinuityFlag] = []
    seen: set[tuple[str, str]] = set()

    def flag(rule: str, msg: str, sentence: str, e: MemoryEntry) -> None:
        if (rule, sentence) not in seen:
            seen.add((rule, sentence))
            flags.append(ContinuityFlag(rule, msg, sentence, e.entry_id, e.title))

    dead = _dead(current, characters)
    for s in _sentences(text):
        if _NOT_ALIVE.search(s) or not _ACTS.search(s):
            continue
        for name, e in dead.items():
            if _mentions(name, s):
                msg = (
                    f"记忆中{name}已经死亡（条目“{e.title}”），但这里仍在说话或行动"
                    if zh
                    else f"{name} is dead in memory (entry '{e.title}') but speaks or acts here"
                )
                flag("dead_character_acts", msg, s, e)
    facts: dict[tuple[str, str], tuple[str, MemoryEntry]] = {}
    places: dict[str, tuple[str, MemoryEntry]] = {}
    for e in current:
        for a, b, rel, _ in _relations(e.content, names):
            facts.setdefault((a.casefold(), b.casefold()), (rel, e))
        for a, place, _ in _places(e.content, names):
            places.setdefault(a.casefold(), (place, e))
    for a, b, rel, s in _relations(text, names):
        known = facts.get((a.casefold(), b.casefold()))
        if known and known[0] != rel:
            msg = (
                f"记忆中{a}是{b}的{known[0]}，这里却写成{rel}"
                if zh
                else f"memory says {a} is {b}'s {known[0]}, the text says {rel}"
            )
            flag("relation_changed", msg, s, known[1])
    for a, place, s in _places(text, names):
        known_place = places.get(a.casefold())
        if known_place and known_place[0] not in place and place not in known_place[0]:
            msg = (
                f"记忆中{a}住在{known_place[0]}，这里却是{place}"
                if zh
                else f"memory says {a} lives in {known_place[0]}, the text says {place}"
            )
            flag("place_changed", msg, s, known_place[1])
    current_names = {n.casefold() for n in names}
    for old in history or []:
        if old.current or old.title.casefold() in current_names:
            continue
        now = next((e for e in current if e.entry_id == old.entry_id), None)
        if now is None:
            continue
        for s in _sentences(text):
            if _mentions(old.title, s):
                msg = (
                    f"“{old.title}”已被更新为“{now.title}”"
                    if zh
                    else f"'{old.title}' was superseded by '{now.title}'"
                )
                flag("outdated_name", msg, s, now)
    return flags
