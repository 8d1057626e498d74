"""The loop measure shared by the generation bench and the validator's basic check."""

from __future__ import annotations

from loraflow.text import repeated_ngram


def test_a_repeated_run_of_eight_words_is_a_loop() -> None:
    phrase = "she was a skilled sailor who knew the sea "
    assert repeated_ngram("Once upon a time " + phrase * 2)
    assert repeated_ngram(phrase.upper() + phrase)  # case does not hide it


def test_answers_that_reuse_words_but_not_a_whole_run_are_not_loops() -> None:
    answer = (
        "Chunks are 800 characters long with a 100 character overlap. The overlap keeps "
        "sentences that cross a chunk boundary whole, and the chunks are embedded once."
    )
    assert not repeated_ngram(answer)
    assert not repeated_ngram("one two three four five six seven")  # shorter than a run


def test_chinese_is_measured_in_characters() -> None:
    assert repeated_ngram("他是一名熟练的水手，" * 2)
    assert not repeated_ngram("块的长度是八百个字符，重叠一百个字符。")
