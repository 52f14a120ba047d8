"""The on-disk index: its layout, its manifest, and opening it for answering.

Layout under settings.index_dir:
  CURRENT        the name of the live generation, replaced atomically once a build is complete
  lock           held (flock) by the one `assistant index` that may write here
  gen-<id>/      one complete generation:
    manifest.json  the shape it was built with, its Chroma collection names, per document its hash
    docs/          the exact text every citation offset refers to
    chroma/        persistent Chroma: collections `chunks-<id>` and `sentences-<id>`
    bm25/          llama-index BM25 retriever over the chunks
With settings.chroma_url the collections live on that Chroma server instead of in chroma/;
everything else stays in index_dir.

Does not split, embed or decide what to rebuild (indexing.py builds generations); does not retrieve.
"""

import atexit
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from assistant.chunking import CHUNKER_VERSION, chunk_sentences, split_sentences
from assistant.embedding import embedding_identity
from assistant.errors import AssistantError
from assistant.loading import shown
from assistant.settings import Settings
from assistant.spans import Span

CHUNKS, SENTENCES = "chunks", "sentences"
FORMAT = 2  # 1 (no longer read): one flat index folder without generations
DOC_KEY = "source"  # the document's id in Chroma and llama-index metadata: llama-index reserves "doc_id"
_GENERATION = re.compile(r"gen-[0-9a-z-]+")


class IndexShape(BaseModel):
    """What an index's contents depend on: an index built with anything else must be rebuilt."""

    model_config = ConfigDict(frozen=True)

    embedding: str
    chunk_tokens: int
    chunk_overlap: int
    chunker: int | None = None  # CHUNKER_VERSION; absent in indexes built before it was recorded
    format: int
    chroma_url: str | None = None  # vectors on a server are another index than those in index_dir


class DocumentEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    sha256: str
    chunks: int
    sentences: int
    # the file it was read from ("" when unknown): a later file of the same name gets another id
    path: str = Field("", validation_alias=AliasChoices("path", "source"))


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: IndexShape
    collections: dict[str, str]
    documents: dict[str, DocumentEntry]
    dimension: int | None = None


@dataclass(frozen=True)
class Generation:
    """One index generation: its folder and, unless it is damaged, its manifest."""

    path: Path
    manifest: Manifest | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def documents(self) -> dict[str, DocumentEntry]:
        return self.manifest.documents if self.manifest else {}


@dataclass
class OpenIndex:
    """Everything retrieval needs, loaded once."""

    documents: dict[str, str]
    chunks: list[Span]
    sentences: list[Span]
    sentence_vectors: np.ndarray
    vector_store: Any  # llama-index ChromaVectorStore over the chunks collection
    bm25_dir: Path
    generation: Path
    chroma: Any  # the Chroma client vector_store reads with

    def close(self) -> None:
        """Let go of this index's Chroma once nothing reads it. When a newer generation has replaced
        its own, also of every other client of that generation: chromadb keeps a folder's database
        and segment files open (deleted ones too) until each client of it is closed, and an index
        build opens clients it does not close."""
        self.chroma.close()
        try:
            live = current_path(self.generation.parent)
        except AssistantError:
            live = None
        if live != self.generation:
            _stop_chroma(self.chroma._identifier)


def _stop_chroma(identifier: str) -> None:
    """Stop the Chroma system every client of `identifier` (an embedded folder) shares, however
    many of them were left open."""
    from chromadb.api.shared_system_client import SharedSystemClient as Shared

    with Shared._refcount_lock:
        Shared._identifier_to_refcount.pop(identifier, None)
        system = Shared._identifier_to_system.pop(identifier, None)
    if system is not None:
        system.stop()


def index_shape(settings: Settings) -> IndexShape:
    return IndexShape(
        embedding=embedding_identity(settings.embedding_path()),
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        chunker=CHUNKER_VERSION,
        format=FORMAT,
        chroma_url=str(settings.chroma_url) if settings.chroma_url else None,
    )


def piece_metadata(span: Span) -> dict[str, Any]:
    """The metadata a chunk or sentence is stored with in Chroma: its place in its document."""
    return {DOC_KEY: span.doc_id, "start": span.start, "end": span.end}


def span_of(metadata: dict[str, Any], text: str) -> Span:
    """The piece `piece_metadata` stored."""
    return Span(str(metadata[DOC_KEY]), int(metadata["start"]), int(metadata["end"]), text)


def collection_names(generation: str) -> dict[str, str]:
    suffix = generation[len("gen-") :]
    return {CHUNKS: f"{CHUNKS}-{suffix}", SENTENCES: f"{SENTENCES}-{suffix}"}


@contextmanager
def index_lock(root: Path) -> Iterator[None]:
    """Only one writer per index. flock dies with its process, so a killed build leaves no stale lock."""
    check_folder(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / "lock", "a+", encoding="utf-8")  # noqa: SIM115 (the `with` below closes it)
    except OSError as e:
        raise AssistantError(
            f"cannot write to the index folder {shown(root)} ({e.strerror}); pass another --index-dir") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AssistantError(
                f"another 'assistant index' is running on {root} (pid {holder}); "
                "wait for it to finish, then run this again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise AssistantError(f"the index folder {shown(root)} is a file, not a folder; pass another --index-dir")


def chroma_client(settings: Settings, generation: Path) -> Any:
    """The one place a Chroma client is made: embedded, its files inside the generation's folder,
    or the server at settings.chroma_url; no telemetry either way."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    quiet = ChromaSettings(anonymized_telemetry=False)
    url = settings.chroma_url
    if url is None:
        return chromadb.PersistentClient(path=str(generation / "chroma"), settings=quiet)
    check_chroma_server(str(url).rstrip("/"), settings.server_timeout)
    try:
        return chromadb.HttpClient(host=str(url.host), port=url.port or 8000, ssl=url.scheme == "https", settings=quiet)
    except Exception as e:  # chromadb wraps connection failures in ValueError, others in its own types
        raise AssistantError(f"cannot use the Chroma server at {url} ({e})") from None


def check_chroma_server(url: str, timeout: float) -> None:
    """Fail in one line, within `timeout`, if `url` is not a running Chroma server: chromadb's own
    client waits without a time limit."""
    import httpx

    try:
        reply = httpx.get(f"{url}/api/v2/heartbeat", timeout=timeout)
    except httpx.TimeoutException:
        raise AssistantError(f"the Chroma server at {url} did not answer in {timeout:g} s") from None
    except httpx.HTTPError:
        raise AssistantError(f"cannot reach the Chroma server at {url}; is 'chroma run' running there?") from None
    if reply.status_code != 200:
        raise AssistantError(f"{url} is not a Chroma server (HTTP {reply.status_code} for /api/v2/heartbeat)")


def open_index(settings: Settings, retry: bool = True) -> OpenIndex:
    """Load the live generation for answering; says how to fix a missing, stale or damaged index."""
    root = settings.index_dir
    check_folder(root)
    live = live_generation(root)
    if live is None and (root / "manifest.json").exists():  # format 1
        raise AssistantError(f"the index at {root} has an older layout; delete it and run 'assistant index'")
    if live is None or live.manifest is None:
        raise AssistantError(f"no index at {root}; run 'assistant index' first")
    if settings.chroma_url:  # an unreachable server first: a mistyped URL also changes the shape
        check_chroma_server(str(settings.chroma_url).rstrip("/"), settings.server_timeout)
    _check_shape(root, live.manifest.shape, index_shape(settings))
    try:
        return _load(live.path, live.manifest, settings)
    except AssistantError:
        raise
    except Exception as e:  # chromadb and bm25s raise many types on damaged files
        if settings.chroma_url:
            raise AssistantError(
                f"the Chroma server at {settings.chroma_url} does not hold the index of {root} ({type(e).__name__}); "
                "run 'assistant index --rebuild'"
            ) from None
        if not retry or current_path(root) == live.path:
            raise damaged(root, e) from None
    return open_index(settings, retry=False)  # a build replaced the generation while it was being read


def _check_shape(root: Path, built: IndexShape, wanted: IndexShape) -> None:
    have, want = built.model_dump(), wanted.model_dump()
    differ = [f"{k} {have[k]!s}, not {want[k]!s}" for k in sorted(want) if have[k] != want[k]]
    if differ:
        raise AssistantError(
            f"the index at {root} was built with other settings ({'; '.join(differ)}); run 'assistant index --rebuild'"
        )


def _load(path: Path, manifest: Manifest, settings: Settings) -> OpenIndex:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    documents = {d: read_text(doc_path(path, d)) for d in manifest.documents}
    client = chroma_client(settings, _writable_copy(path) if settings.chroma_url is None else path)
    names = manifest.collections
    got = client.get_collection(names[SENTENCES]).get(include=["embeddings", "metadatas", "documents"])
    sentences = [span_of(meta, text) for meta, text in zip(got["metadatas"], got["documents"])]
    order = sorted(range(len(sentences)), key=lambda i: (sentences[i].doc_id, sentences[i].start))
    sentences = [sentences[i] for i in order]
    if any(documents[s.doc_id][s.start : s.end] != s.text for s in sentences):
        raise AssistantError(
            f"the index at {settings.index_dir} does not match its documents; run 'assistant index --rebuild'")
    vectors = np.asarray(got["embeddings"], dtype=np.float32)[order] if order else np.zeros((0, 1), np.float32)
    if order and vectors.shape[1] != manifest.dimension:
        raise AssistantError(
            f"the index at {settings.index_dir} holds {vectors.shape[1]}-dimension vectors, not the "
            f"{manifest.dimension} its manifest says; run 'assistant index --rebuild'"
        )
    return OpenIndex(
        documents=documents,
        chunks=stored_chunks(path, manifest.documents, settings),
        sentences=sentences,
        sentence_vectors=vectors,
        vector_store=ChromaVectorStore(chroma_collection=client.get_collection(names[CHUNKS])),
        bm25_dir=path / "bm25",
        generation=path,
        chroma=client,
    )


def stored_chunks(path: Path, documents: dict[str, DocumentEntry], settings: Settings) -> list[Span]:
    """The chunks of a generation's document copies: cheaper to cut again than to store."""
    chunks: list[Span] = []
    for doc_id in sorted(documents):
        text = read_text(doc_path(path, doc_id))
        chunks += chunk_sentences(text, split_sentences(doc_id, text), settings.chunk_tokens, settings.chunk_overlap)
    return chunks


def _writable_copy(generation: Path) -> Path:
    """`generation`, or when this process may not write there (a read-only disk or folder), a
    temporary copy of its Chroma files, deleted at exit: Chroma opens its database for writing
    even to read it."""
    folder = generation / "chroma"
    if all(os.access(p, os.W_OK) for p in [folder, *folder.rglob("*")]):
        return generation
    copy = Path(tempfile.mkdtemp(prefix="assistant-index-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    shutil.copytree(folder, copy / "chroma")
    return copy


def current_path(root: Path) -> Path | None:
    """The folder CURRENT names, or None when there is no CURRENT; a bad name is damage."""
    try:
        name = (root / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise damaged(root, e) from None
    if not _GENERATION.fullmatch(name):
        raise damaged(root, ValueError(f"CURRENT names {name[:40]!r}"))
    return root / name


def live_generation(root: Path) -> Generation | None:
    path = current_path(root)
    if path is None:
        return None
    if not path.is_dir():
        raise damaged(root, ValueError(f"CURRENT names {path.name}, which is missing"))
    return Generation(path, read_manifest(path))


def point_at(root: Path, name: str) -> None:
    """Make `name` the live generation in one step: a reader sees the old CURRENT or the new one."""
    tmp = root / "CURRENT.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / "CURRENT")
    directory = os.open(root, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def drop(settings: Settings, path: Path, collections: dict[str, str]) -> None:
    """Delete a generation: its Chroma collections, then its files."""
    try:
        client = chroma_client(settings, path)
        for name in collections.values():
            client.delete_collection(name)
    except Exception:  # a damaged generation being replaced by --rebuild: its files go all the same
        pass
    shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(root: Path, live: Generation | None) -> None:
    """Generations that a killed build left unfinished: nothing points at them."""
    for path in root.glob("gen-*"):
        if live is None or path != live.path:
            shutil.rmtree(path, ignore_errors=True)
    (root / "CURRENT.tmp").unlink(missing_ok=True)


def damaged(root: Path, e: Exception) -> AssistantError:
    detail = str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__
    return AssistantError(f"the index at {root} is damaged ({detail}); run 'assistant index --rebuild'")


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((path / "manifest.json").read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise damaged(path.parent, ValueError(f"manifest: {where + ': ' if where else ''}{first['msg']}")) from None
    except OSError as e:
        raise damaged(path.parent, e) from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path / "manifest.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2), encoding="utf-8")
    tmp.replace(path / "manifest.json")


def read_text(path: Path) -> str:
    """Byte-exact: read_text() would turn CRLF into LF and shift every offset after it."""
    return path.read_bytes().decode("utf-8")


def doc_path(path: Path, doc_id: str) -> Path:
    return path / "docs" / f"{_file_name(doc_id)}.txt"


def _file_name(doc_id: str) -> str:
    """An id as one file name: 'b/report.txt' -> 'b%2Freport.txt'."""
    return doc_id.replace("%", "%25").replace("/", "%2F")


def stored_ids(path: Path) -> list[str]:
    """The ids of the document copies in a generation's docs/ folder."""
    copies = sorted((path / "docs").glob("*.txt")) if (path / "docs").is_dir() else []
    names = [c.name[: -len(".txt")] for c in copies]
    return [re.sub("%(25|2F)", lambda m: {"25": "%", "2F": "/"}[m.group(1)], n) for n in names]
