"""Read a document from disk into text, refusing what cannot be a document.

Does not chunk or index; the text it returns is the one every citation offset refers to.
"""

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import AssistantError

SUFFIXES = (".txt", ".md", ".pdf")


@dataclass(frozen=True)
class Document:
    doc_id: str  # the file's name: what citations show
    text: str
    sha256: str


def load_document(path: Path, max_mb: float) -> Document:
    """Validate and read one .txt, .md or .pdf file."""
    data = _read_bytes(path, max_mb)
    if path.suffix.lower() == ".pdf":
        text = _pdf_text(path, data)
    else:
        text = _decode(path, data)
    if not text.strip():
        raise AssistantError(f"{path} has no text to index")
    return Document(doc_id=path.name, text=text, sha256=hashlib.sha256(text.encode()).hexdigest())


def _read_bytes(path: Path, max_mb: float) -> bytes:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise AssistantError(f"no such file: {path}") from None
    except OSError as e:  # e.g. a folder on the way that this user may not enter
        raise AssistantError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise AssistantError(f"{path} is a directory; give the document files inside it")
    if path.suffix.lower() not in SUFFIXES:
        raise AssistantError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    size_mb = info.st_size / 1_000_000
    if size_mb > max_mb:
        raise AssistantError(f"{path} is {size_mb:.4g} MB, over the {max_mb:g} MB limit (--max-file-mb)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise AssistantError(f"cannot read {path}: {e.strerror}") from None


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data:
        raise AssistantError(f"{path} looks binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AssistantError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None


def _pdf_text(path: Path, data: bytes) -> str:
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings would break the one-line error
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as e:
        raise AssistantError(f"{path} is not a readable PDF: {e}") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise AssistantError(f"{path} has no extractable text (a scanned PDF?)")
    return text
