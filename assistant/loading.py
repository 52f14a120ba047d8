"""Read a document from disk into text, refusing what cannot be a document; check a question likewise.

Does not chunk or index; the text it returns is the one every citation offset refers to.
"""

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.errors import AssistantError

if TYPE_CHECKING:
    from assistant.settings import Settings

SUFFIXES = (".txt", ".md", ".pdf")


@dataclass(frozen=True)
class Document:
    doc_id: str  # what citations show: the file's name, made unique by indexing (indexing.unique_ids)
    text: str
    sha256: str
    path: str = ""  # the file's absolute path, when it was read from one


def load_document(path: Path, max_mb: float) -> Document:
    """Validate and read one .txt, .md or .pdf file."""
    data = _read_bytes(path, max_mb)
    if path.suffix.lower() == ".pdf" or data.startswith(b"%PDF-"):  # by content too: a PDF named .md is still one
        text = _pdf_text(path, data)
    else:
        text = _decode(path, data)
    if not text.strip():
        raise AssistantError(f"{shown(path)} has no text to index")
    if not re.search(r"[^\W_]", text):  # only symbols, emoji or punctuation: nothing to search or quote
        raise AssistantError(f"{shown(path)} has no words to index (no letters or digits)")
    return Document(path.name, text, hashlib.sha256(text.encode()).hexdigest(), str(path.resolve()))


def _read_bytes(path: Path, max_mb: float) -> bytes:
    """The document's bytes, within the --max-file-mb cap."""
    if path.is_dir():
        raise AssistantError(f"{shown(path)} is a directory; give the document files inside it")
    if path.suffix.lower() not in SUFFIXES and path.exists():
        raise AssistantError(f"{shown(path)}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    return read_bounded(path, int(max_mb * 1_000_000), "", f"the {max_mb:g} MB limit (--max-file-mb)")


def read_bounded(path: Path, cap: int, what: str = "", limit: str = "") -> bytes:
    """A file's bytes, at most `cap` of them: only a regular file (after following links) is
    opened, and no more than the cap is read, since a device or a pipe can claim any size, or none,
    and never end. `what` names the kind of file in errors ("fitted file "), `limit` the cap."""
    named = f"{what}{shown(path)}"
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise AssistantError(f"no such file: {named}") from None
    except OSError as e:  # e.g. a folder on the way that this user may not enter, or a link loop
        raise AssistantError(f"cannot read {named}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, pipe or socket)"
        raise AssistantError(f"{named} is {kind}; give a file")
    too_big = AssistantError(f"{named} is over {limit or f'the {cap / 1e6:g} MB limit for such a file'}")
    if info.st_size > cap:
        raise too_big
    try:
        with open(path, "rb", opener=_no_wait) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the check above
                raise AssistantError(f"{named} is not a regular file; give a file")
            data = handle.read(cap + 1)
    except OSError as e:
        raise AssistantError(f"cannot read {named}: {e.strerror}") from None
    if len(data) > cap:
        raise too_big
    return data


def _no_wait(path: str, flags: int) -> int:
    """Open without blocking: opening a FIFO for reading would otherwise wait for a writer."""
    return os.open(path, flags | os.O_NONBLOCK)


def shown(path: Path | str) -> str:
    """A path or document name as printed: control characters escaped, so a name cannot forge a
    line of output."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(path))


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data:
        raise AssistantError(f"{shown(path)} looks binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AssistantError(f"{shown(path)} is not UTF-8 text (bad byte at offset {e.start})") from None


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
        raise AssistantError(f"{shown(path)} is not a readable PDF: {e}") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise AssistantError(f"{shown(path)} has no extractable text (a scanned PDF?)")
    return text


def check_question(question: str, settings: "Settings") -> str:
    question = question.strip()
    if not question:
        raise AssistantError("the question is empty")
    if len(question) > settings.max_question_chars:
        raise AssistantError(
            f"the question is {len(question)} characters, over the {settings.max_question_chars} limit")
    if any(ord(c) < 32 and c not in "\t\n" for c in question):
        raise AssistantError("the question contains control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in question):  # bytes that were not UTF-8, kept by the shell's decoding
        raise AssistantError("the question is not valid UTF-8 text")
    return question
