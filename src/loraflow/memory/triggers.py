"""Keyword triggers: which of an entry's keywords occur in the recent story text.

Three rules, chosen so Chinese (no spaces) and English both work:
- `/pattern/` is a case-insensitive regular expression;
- a keyword holding a Chinese character matches as a plain substring (there are no word
  boundaries to respect in Chinese text);
- any other keyword matches case-insensitively as a whole word, where only Latin letters
  (accented ones too), digits and `_` count as word characters, so "Alice" matches in
  "Alice说" but not in "Alicent".
"""

from __future__ import annotations

import re
from functools import lru_cache

from loraflow.memory.entries import is_regex
from loraflow.memory.language import has_cjk

# What a Latin keyword must not touch on either side. Spelled as a small class because
# "word character but not CJK" ([^\W...]) takes re ~35 ms to compile per keyword.
_WORDISH = "[A-Za-z0-9_\u00c0-\u024f]"


@lru_cache(maxsize=4096)
def _pattern(keyword: str) -> re.Pattern[str]:
    if is_regex(keyword):
        return re.compile(keyword[1:-1], re.IGNORECASE)
    if has_cjk(keyword):
        return re.compile(re.escape(keyword), re.IGNORECASE)
    return re.compile(rf"(?<!{_WORDISH}){re.escape(keyword)}(?!{_WORDISH})", re.IGNORECASE)


def keyword_hits(keywords: list[str], text: str) -> list[str]:
    """The keywords that occur in `text`, in the order given."""
    return [k for k in keywords if k.strip() and _pattern(k).search(text)]


def find_keyword(keyword: str, text: str) -> re.Match[str] | None:
    """The first occurrence of one keyword in `text` under the rules above."""
    return _pattern(keyword).search(text)
