"""Which language a piece of story text is in (Chinese or not), so output can follow it."""

from __future__ import annotations

import re

# CJK ideographs (with extension A) and the CJK punctuation/full-width blocks.
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = re.compile(f"[{CJK_CHARS}]")
_LATIN = re.compile(r"[A-Za-z]")


def has_cjk(text: str) -> bool:
    """True when `text` holds at least one Chinese character."""
    return bool(_CJK.search(text))


def language_of(text: str) -> str:
    """'zh' when Chinese characters outnumber a third of the letters, else 'en'."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    # A Latin letter carries about a third of the information of a Chinese character.
    return "zh" if cjk and cjk * 3 >= latin else "en"
