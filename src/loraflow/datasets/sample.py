"""Example data for `loraflow prepare --sample`: a short novel in each raw format."""

from __future__ import annotations

import json
from pathlib import Path

_STORY_EN = (
    "The lighthouse keeper counted the ships every night. There were seven in the harbour "
    "when the storm began, and six when it ended.\n\n"
    "Mara climbed the spiral stairs with a lantern in one hand and the logbook in the other. "
    '"Someone is still out there," she said to the wind. The wind did not answer.\n\n'
    "At dawn a small boat drifted into the bay, its sail torn, its captain asleep at the helm. "
    "Mara rowed out to meet it, and that was how the winter of the seventh ship began."
)
_STORY_ZH = (
    "山城的雾总在清晨最浓。林晚推开木窗，听见巷口卖豆花的吆喝声。\n\n"
    "她在旧书店里找到一封没有寄出的信，信封上写着外婆的名字。信里说：“等桂花开了，我就回来。”"
    "林晚决定去找写信的人。\n\n"
    "火车穿过隧道，窗外的江水一闪而过。她不知道，这趟旅程会改变她对家族的全部记忆。"
)


def write_sample(raw_dir: Path) -> list[Path]:
    """Write sample novels as .txt, .json and .jsonl into `raw_dir`; return the files."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    txt = raw_dir / "sample_lighthouse.txt"
    txt.write_text(_STORY_EN + "\n", encoding="utf-8")
    as_json = raw_dir / "sample_novels.json"
    as_json.write_text(
        json.dumps(
            [
                {
                    "title": "雾城来信",
                    "content": _STORY_ZH,
                    "author": "loraflow",
                    "genre": "家庭",
                    "tags": ["悬疑", "亲情"],
                }
            ],
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )
    jsonl = raw_dir / "sample_chapters.jsonl"
    chapters = [
        {"title": "Chapter 1", "content": _STORY_EN.split("\n\n")[0]},
        {"title": "Chapter 2", "content": " ".join(_STORY_EN.split("\n\n")[1:])},
    ]
    jsonl.write_text("".join(json.dumps(c) + "\n" for c in chapters), encoding="utf-8")
    return [txt, as_json, jsonl]
