"""Chunking: sizes, coverage, overlap and natural break points in English and Chinese."""

from __future__ import annotations

import random

import pytest

from loraflow.errors import InvalidInput
from loraflow.rag.chunking import Chunk, check_kb_chunking, split_text

ENGLISH = (
    "Cats are small carnivorous mammals. They are often kept as pets! Do they sleep a lot? "
    "Yes, they sleep for twelve to sixteen hours a day.\n\n"
    "The domestic cat is the only domesticated species in the family Felidae. Recent "
    "advances in archaeology suggest that cats were domesticated in the Near East around "
    "7500 BC. Cats communicate by meowing, purring, hissing and growling."
)
CHINESE = (
    "猫是一种小型食肉哺乳动物。它们经常被当作宠物饲养！猫每天睡很多时间吗？"
    "是的，它们每天睡十二到十六个小时。家猫是猫科中唯一被驯化的物种；"
    "考古学的最新进展表明，猫大约在公元前七千五百年在近东被驯化。"
    "猫通过喵喵叫、呼噜声、嘶嘶声和咆哮来交流。"
)
SENTENCE_ENDS = tuple("。！？；.!?")


def assert_valid(text: str, chunks: list[Chunk], size: int) -> None:
    """Invariants every caller relies on."""
    assert chunks, "non-empty text must give at least one chunk"
    covered = set()
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert 0 < len(c.text) <= size
        assert c.text.strip() == c.text
        covered.update(range(c.start, c.end))
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert not missing, f"characters not in any chunk: {missing[:5]}"
    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts))


def test_english_chunks_fit_cover_and_end_at_sentences() -> None:
    chunks = split_text(ENGLISH, chunk_size=120, overlap=20)
    assert_valid(ENGLISH, chunks, 120)
    assert len(chunks) >= 3
    assert all(c.text.endswith(SENTENCE_ENDS) for c in chunks)


def test_consecutive_chunks_overlap_by_about_the_requested_amount() -> None:
    chunks = split_text(ENGLISH, chunk_size=120, overlap=30)
    for a, b in zip(chunks, chunks[1:], strict=False):
        shared = a.end - b.start
        assert 5 <= shared <= 30, (a, b)
        # The overlap starts at a word, not in the middle of one.
        assert ENGLISH[b.start - 1].isspace()


def test_zero_overlap_gives_disjoint_chunks() -> None:
    chunks = split_text(ENGLISH, chunk_size=100, overlap=0)
    assert_valid(ENGLISH, chunks, 100)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))


def test_paragraph_break_is_preferred() -> None:
    first, second = ENGLISH.split("\n\n")
    chunks = split_text(ENGLISH, chunk_size=len(first) + 40, overlap=0)
    assert chunks[0].text == first


def test_chinese_splits_at_sentence_ends_without_spaces() -> None:
    chunks = split_text(CHINESE, chunk_size=40, overlap=0)
    assert_valid(CHINESE, chunks, 40)
    assert len(chunks) >= 3
    assert all(c.text.endswith(tuple("。！？；")) for c in chunks), [c.text for c in chunks]


def test_chinese_with_overlap_stays_valid() -> None:
    chunks = split_text(CHINESE, chunk_size=50, overlap=10)
    assert_valid(CHINESE, chunks, 50)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:], strict=False))


def test_text_without_any_boundary_is_hard_cut() -> None:
    text = "字" * 250
    chunks = split_text(text, chunk_size=100, overlap=10)
    assert_valid(text, chunks, 100)
    assert [len(c.text) for c in chunks][:2] == [100, 100]


def test_short_and_blank_text() -> None:
    assert split_text("  hello world \n", 50, 5) == [Chunk("hello world", 2, 13)]
    assert split_text(" \n\t ", 50, 5) == []
    assert split_text("", 50, 5) == []


def test_same_input_gives_same_chunks() -> None:
    assert split_text(ENGLISH, 90, 15) == split_text(ENGLISH, 90, 15)


@pytest.mark.parametrize("seed", range(6))
def test_random_mixed_text_keeps_invariants(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["word", "猫", "。", ". ", "\n\n", "，", ", ", " ", "x" * 30, "长句子没有标点" * 5]
    text = "".join(rng.choice(pieces) for _ in range(300))
    size = rng.choice([7, 30, 80, 200])
    overlap = rng.randrange(0, size)
    assert_valid(text, split_text(text, size, overlap), size)


@pytest.mark.parametrize(
    ("size", "overlap", "quoted"),
    [(0, 0, "chunk_size=0"), (100, -1, "overlap=-1"), (100, 100, "overlap=100")],
)
def test_invalid_parameters_are_rejected(size: int, overlap: int, quoted: str) -> None:
    with pytest.raises(InvalidInput, match=quoted):
        split_text("some text", size, overlap)


@pytest.mark.parametrize(("size", "overlap"), [(50, 0), (50, 49), (20000, 19999), (800, 120)])
def test_knowledge_base_chunking_accepts_the_whole_range(size: int, overlap: int) -> None:
    check_kb_chunking(size, overlap)


@pytest.mark.parametrize(
    ("size", "overlap", "said"),
    [
        (0, 0, "Size must be a whole number from 50 to 20000; it is 0"),
        (None, 0, "Size must be a whole number from 50 to 20000; it is empty"),
        (49, 0, "Size must be a whole number from 50 to 20000; it is 49"),
        (20001, 0, "Size must be a whole number from 50 to 20000; it is 20001"),
        (True, 0, "Size must be a whole number from 50 to 20000; it is True"),
        (
            100,
            100,
            "Overlap must be a whole number from 0 to 99, less than the chunk size; it is 100",
        ),
        (
            100,
            -1,
            "Overlap must be a whole number from 0 to 99, less than the chunk size; it is -1",
        ),
        (
            100,
            None,
            "Overlap must be a whole number from 0 to 99, less than the chunk size; it is empty",
        ),
    ],
)
def test_knowledge_base_chunking_names_the_callers_fields(
    size: int | None, overlap: int | None, said: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_kb_chunking(size, overlap, ("Size", "Overlap"))
    assert caught.value.message == said
