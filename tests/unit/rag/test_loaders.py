"""Loaders: each supported file type, and clear errors for files that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pypdf
import pytest

from loraflow.errors import NotFound, UnsupportedFile
from loraflow.rag.loaders import SUPPORTED_SUFFIXES, iter_files, load_document

from .helpers import make_pdf


def test_txt_and_md_are_read_as_utf8(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("Grüße aus Köln\r\n猫很可爱", encoding="utf-8")
    (tmp_path / "readme.md").write_bytes("\ufeff# Title\n\nBody".encode())
    doc = load_document(tmp_path / "notes.txt")
    assert (doc.text, doc.source, doc.kind) == ("Grüße aus Köln\n猫很可爱", "notes.txt", "txt")
    md = load_document(tmp_path / "readme.md", source="Project README")
    assert md.text == "# Title\n\nBody"  # the BOM is not part of the text
    assert (md.source, md.kind) == ("Project README", "md")


def test_non_utf8_text_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(UnsupportedFile, match="'latin.txt' is not UTF-8 text"):
        load_document(tmp_path / "latin.txt")


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("  \n\n ")
    with pytest.raises(UnsupportedFile, match="contains no text"):
        load_document(tmp_path / "empty.md")


def test_unknown_suffix_lists_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(UnsupportedFile) as err:
        load_document(tmp_path / "report.docx")
    assert "'.docx'" in str(err.value)
    assert all(s in str(err.value) for s in SUPPORTED_SUFFIXES)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nope.txt"):
        load_document(tmp_path / "nope.txt")


def test_pdf_text_is_extracted(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "cats.pdf", ["Cats sleep sixteen hours (a day).", "Second line."])
    doc = load_document(pdf)
    assert doc.kind == "pdf"
    assert "Cats sleep sixteen hours (a day)." in doc.text
    assert "Second line." in doc.text


def test_corrupt_pdf_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(UnsupportedFile, match="'broken.pdf' is not a readable PDF"):
        load_document(tmp_path / "broken.pdf")


def test_pdf_without_text_is_rejected(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    writer.write(tmp_path / "scan.pdf")
    with pytest.raises(UnsupportedFile, match="no extractable text"):
        load_document(tmp_path / "scan.pdf")


def test_encrypted_pdf_is_rejected(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("secret", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(UnsupportedFile, match="encrypted"):
        load_document(tmp_path / "locked.pdf")


def test_json_records_keep_headings_and_bodies(tmp_path: Path) -> None:
    records = [
        {"id": 1, "title": "Cat care", "content": "Feed cats twice a day.", "tags": ["pets"]},
        {"instruction": "What do kittens drink?", "input": "", "output": "Milk, then water."},
        {"question": "Nested?", "answer": ["part one", "part two"]},
    ]
    (tmp_path / "kb.json").write_text(json.dumps(records))
    text = load_document(tmp_path / "kb.json").text
    assert text.split("\n\n") == [
        "Cat care\nFeed cats twice a day.",
        "What do kittens drink?\nMilk, then water.",
        "Nested?\npart one\npart two",
    ]


def test_json_without_known_keys_uses_all_strings(tmp_path: Path) -> None:
    value = {"name": "Felix", "age": 3, "owner": {"city": "Paris", "pets": ["Tom", None]}}
    (tmp_path / "cat.json").write_text(json.dumps(value))
    assert load_document(tmp_path / "cat.json").text == "Felix\nParis\nTom"


def test_chat_style_json_uses_message_contents(tmp_path: Path) -> None:
    value = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}
    (tmp_path / "chat.json").write_text(json.dumps(value))
    assert load_document(tmp_path / "chat.json").text == "Hi\n\nHello"


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[\n  {"a": 1},\n  {"b": }\n]')
    with pytest.raises(UnsupportedFile, match="line 3 column 9"):
        load_document(tmp_path / "bad.json")


def test_jsonl_reads_each_line(tmp_path: Path) -> None:
    lines = ['{"text": "first"}', "", '{"question": "Q?", "answer": "A."}', '"plain"']
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    assert load_document(tmp_path / "data.jsonl").text == "first\n\nQ?\nA.\n\nplain"


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UnsupportedFile, match="'data.jsonl' line 3 is not valid JSON"):
        load_document(tmp_path / "data.jsonl")


def test_json_with_only_numbers_has_no_text(tmp_path: Path) -> None:
    (tmp_path / "nums.json").write_text("[1, 2, 3]")
    with pytest.raises(UnsupportedFile, match="contains no text"):
        load_document(tmp_path / "nums.json")


def test_iter_files_expands_folders_and_keeps_explicit_files(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".git").mkdir()
    for name in ["b.md", "a.txt", "sub/c.json", "image.png", ".hidden.txt", ".git/x.txt"]:
        (docs / name).write_text("x")
    extra = tmp_path / "extra.docx"
    extra.write_text("x")
    found = iter_files([docs, extra, docs / "a.txt"])
    assert found == [docs / "a.txt", docs / "b.md", docs / "sub" / "c.json", extra]


def test_iter_files_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="missing"):
        iter_files([tmp_path / "missing"])
