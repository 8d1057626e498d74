"""Memory suggestions: candidate entries pulled out of newly generated text by heuristics.

What is found, and nothing more (no model is asked):
- English names: capitalised words that are not sentence openers or common words, seen
  at least twice or next to a speech verb ("said Mara", "Mara asked");
- Chinese names: a common surname plus one or two characters right before a speech/action
  verb (李明说, 欧阳雪笑道), or after 名叫/叫做/名为;
- key dialogue: quoted speech ("...", “...”, 「...」) whose speaker is a found or known name.
Suggestions quote the text itself, so Chinese text gives Chinese suggestions. Names the
memory already holds are skipped. Expect misses (names without a verb nearby, one-off
mentions) and some false names (capitalised place names).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from loraflow.memory.entries import MemoryEntry
from loraflow.memory.language import CJK_CHARS, language_of

MAX_SUGGESTIONS = 8
MAX_DIALOGUES = 3

_COMPOUND_SURNAMES = "欧阳|司马|上官|诸葛|慕容|令狐|东方|独孤|南宫|皇甫|公孙|长孙|宇文"
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
    "程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾"
    "毛郝龚邵万钱严覃武戴莫孔向汤柳萧楚燕云凌"
)
_ZH_VERBS = "说|道|问|笑|喊|答|叹|想|点头|摇头|看着|望着|走|站|转身|低声|大声|冷笑|微笑"
_ZH_NAME = re.compile(
    rf"(?:{_COMPOUND_SURNAMES}|[{_SURNAMES}])[{CJK_CHARS}]{{1,2}}?(?=(?:{_ZH_VERBS}))"
)
_ZH_CALLED = re.compile(rf"(?:名叫|叫做|名为|名字是)([{CJK_CHARS}]{{2,3}})")
_EN_NAME = re.compile(r"\b[A-Z][a-z]{2,}(?:\s+[A-Z][a-z]{2,})?\b")
_EN_SPEECH = r"said|says|asked|asks|replied|whispered|shouted|answered|cried|muttered|smiled|nodded"
_STOPWORDS = (
    "The This That These Those There Then When What Where Which While Who Why How Here "
    "His Her Hers Their They She Him But And For Not Now Yet Our Your You Its Into Once "
    "After Before Every Each Some None One Two Three Yes Maybe Perhaps Still Just Only "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April "
    "June July August September October November December Chapter God Mr Mrs Miss Sir"
)
_EN_STOP = frozenset(_STOPWORDS.split())
_QUOTES = re.compile(r"“([^”]{4,300})”|「([^」]{4,300})」|\"([^\"]{8,300})\"")
_SENTENCE = re.compile(r"[^。！？!?.\n]+[。！？!?.]*[”」’\"]*")


@dataclass
class Suggestion:
    """A proposed entry, with the sentence of the text it came from."""

    kind: str
    title: str
    content: str
    keywords: list[str] = field(default_factory=list)
    evidence: str = ""
    language: str = "en"


def _sentence_at(text: str, pos: int) -> str:
    for m in _SENTENCE.finditer(text):
        if m.start() <= pos < m.end():
            return m.group().strip()
    return text[max(0, pos - 60) : pos + 60].strip()


def _known(entries: list[MemoryEntry]) -> set[str]:
    return {n.casefold() for e in entries for n in e.names()}


def _english_names(text: str) -> dict[str, int]:
    """Name -> first position, for names seen twice or beside a speech verb."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    spoken: set[str] = set()
    for m in _EN_NAME.finditer(text):
        name = m.group()
        words = name.split()
        if words[0] in _EN_STOP:
            if len(words) == 1:
                continue
            name = words[1]
        before = text[max(0, m.start() - 3) : m.start()]
        # A capitalised word at a sentence start proves nothing by itself.
        opener = m.start() == 0 or bool(re.search(r"[.!?\"“]\s*$|\n\s*$", before))
        around = text[max(0, m.start() - 12) : m.end() + 12]
        if re.search(
            rf"\b({_EN_SPEECH})\s+{re.escape(name)}|{re.escape(name)}\s+({_EN_SPEECH})\b", around
        ):
            spoken.add(name)
        if not opener or name in spoken:
            counts[name] += 1
            first.setdefault(name, m.start())
    return {n: first[n] for n in first if counts[n] >= 2 or n in spoken}


def _chinese_names(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for m in _ZH_NAME.finditer(text):
        found.setdefault(m.group(), m.start())
    for m in _ZH_CALLED.finditer(text):
        found.setdefault(m.group(1), m.start(1))
    return found


def _speaker(text: str, start: int, end: int, names: list[str]) -> str | None:
    """The name nearest before a quote (李明说：“……”), else nearest after ("...," said Mara)."""
    before, after = text[max(0, start - 16) : start], text[end : end + 16]
    hits = [(before.rfind(n), n) for n in names if n in before]
    if hits:
        return max(hits)[1]
    later = [(after.find(n), n) for n in names if n in after]
    return min(later)[1] if later else None


def suggest(text: str, entries: list[MemoryEntry]) -> list[Suggestion]:
    """Candidate character and key-dialogue entries found in `text`, not yet in memory."""
    lang = language_of(text)
    known = _known(entries)
    names = _chinese_names(text) if lang == "zh" else _english_names(text)
    out: list[Suggestion] = []
    for name, pos in sorted(names.items(), key=lambda kv: kv[1]):
        if name.casefold() in known:
            continue
        evidence = _sentence_at(text, pos)
        out.append(Suggestion("character", name, evidence, [name], evidence, lang))
    speakers = list(names) + [n for e in entries if e.kind == "character" for n in e.names()]
    dialogues = 0
    for m in _QUOTES.finditer(text):
        quote = next(g for g in m.groups() if g).strip().rstrip(",，")
        who = _speaker(text, m.start(), m.end(), speakers)
        if who is None or dialogues >= MAX_DIALOGUES:
            continue
        dialogues += 1
        content = f"{who}：「{quote}」" if lang == "zh" else f'{who}: "{quote}"'
        title = f"{who}：{quote[:16]}" if lang == "zh" else f"{who}: {quote[:32]}"
        out.append(Suggestion("dialogue", title, content, [who], m.group(), lang))
    return out[:MAX_SUGGESTIONS]
