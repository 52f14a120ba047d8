"""Loading reads .txt, .md and .pdf files and refuses everything else with a message that helps."""

import hashlib

import pytest

from assistant.errors import AssistantError
from assistant.loading import load_document
from assistant.settings import DEFAULT_CORPUS


def test_txt_loads(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Cats sleep sixteen hours a day.\nDogs bark.\n", encoding="utf-8")
    doc = load_document(path, 10)
    assert doc.doc_id == "notes.txt"
    assert doc.text == "Cats sleep sixteen hours a day.\nDogs bark.\n"
    assert doc.sha256 == hashlib.sha256(doc.text.encode()).hexdigest()


def test_md_loads_with_unicode(tmp_path):
    path = tmp_path / "readme.MD"
    text = "# Título\n\nZelensky’s “plan” — café.\n"
    path.write_text(text, encoding="utf-8")
    doc = load_document(path, 10)
    assert (doc.doc_id, doc.text) == ("readme.MD", text)


def test_bundled_article_loads():
    doc = load_document(DEFAULT_CORPUS, 10)
    assert doc.doc_id == "article.txt" and len(doc.text) > 10_000


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffHello world.".encode("utf-8"))
    doc = load_document(path, 10)
    assert doc.text == "Hello world."
    plain = tmp_path / "plain.txt"
    plain.write_text("Hello world.", encoding="utf-8")
    assert load_document(plain, 10).sha256 == doc.sha256


def test_content_hash_follows_the_text(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Same text.")
    b.write_text("Same text.")
    assert load_document(a, 10).sha256 == load_document(b, 10).sha256
    b.write_text("Other text.")
    assert load_document(a, 10).sha256 != load_document(b, 10).sha256


def load_error(path, max_mb: float = 10) -> str:
    with pytest.raises(AssistantError) as info:
        load_document(path, max_mb)
    assert type(info.value) is AssistantError and info.value.exit_code == 1
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.txt")
    assert "no such file" in message and "nope.txt" in message


def test_directory(tmp_path):
    folder = tmp_path / "docs.txt"
    folder.mkdir()
    assert "is a directory" in load_error(folder)


@pytest.mark.parametrize("name", ["data.csv", "page.html", "noext", "doc.docx"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("Some text.")
    message = load_error(path)
    assert "unsupported file type" in message
    assert all(suffix in message for suffix in (".txt", ".md", ".pdf"))


def test_binary_file(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    assert "looks binary" in load_error(path)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Un café crème.".encode("latin-1"))
    message = load_error(path)
    assert "not UTF-8" in message and "offset 6" in message


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  ", "\ufeff\n".encode()])
def test_empty_and_blank_files(tmp_path, content):
    path = tmp_path / "empty.md"
    path.write_bytes(content)
    assert "no text to index" in load_error(path)


def test_over_the_size_cap(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("A sentence of text. " * 20)  # 400 bytes
    message = load_error(path, max_mb=0.0001)  # 100 bytes
    assert "limit" in message and "--max-file-mb" in message
    assert load_document(path, 0.001).text.startswith("A sentence")  # under a larger cap it loads


def test_pdf_with_text(tmp_path, write_text_pdf):
    path = write_text_pdf(tmp_path / "cats.pdf", ["Cats sleep sixteen hours a day.", "Dogs bark at night."])
    doc = load_document(path, 10)
    assert doc.doc_id == "cats.pdf"
    assert "Cats sleep sixteen hours a day." in doc.text and "Dogs bark at night." in doc.text


def test_pdf_without_text(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    path = tmp_path / "scan.pdf"
    writer.write(path)
    assert "no extractable text" in load_error(path)


@pytest.mark.parametrize(
    "content",
    [b"this is not a pdf at all", b"%PDF-1.4\n1 0 obj garbage\n%%EOF\n", b"", b"%PDF-1.4\x00\x00\x00"],
    ids=["garbage", "no-xref", "empty", "truncated"],
)
def test_corrupt_pdf(tmp_path, content):
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    assert "broken.pdf" in load_error(path)


def test_truncated_real_pdf(tmp_path, write_text_pdf):
    whole = write_text_pdf(tmp_path / "whole.pdf", ["Cats sleep sixteen hours a day."]).read_bytes()
    path = tmp_path / "cut.pdf"
    path.write_bytes(whole[: len(whole) // 3])
    # Either pypdf recovers the text or the loader refuses it; nothing else may escape.
    try:
        doc = load_document(path, 10)
    except AssistantError as e:
        assert "cut.pdf" in str(e)
    else:
        assert doc.text.strip()
