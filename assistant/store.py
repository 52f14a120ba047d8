"""The on-disk index: its layout, its manifest, and opening it for answering.

Layout under settings.index_dir:
  CURRENT        the name of the live generation, replaced atomically once a build is complete
  lock           held (flock) by the one `assistant index` that may write here
  gen-<id>/      one complete generation:
    manifest.json  the shape it was built with, its Chroma collection names, per document its hash,
                   size, chunk and sentence counts and the file it was read from
    docs/          the exact text every citation offset refers to
    chroma/        persistent Chroma: the collection `chunks-<id>` (sentences are cut again from docs/,
                   and embedded when a question's passages hold them: a long text indexes in
                   minutes, not an hour)
    bm25/          llama-index BM25 retriever over the chunks
With settings.chroma_url the collections live on that Chroma server instead of in chroma/;
everything else stays in index_dir.

Does not split, embed or decide what to rebuild (indexing.py builds generations); does not retrieve.
"""

import atexit
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from assistant.chunking import CHUNKER_VERSION, chunk_sentences, split_sentences
from assistant.embedding import embedding_identity
from assistant.errors import AssistantError
from assistant.loading import shown
from assistant.settings import Settings
from assistant.spans import Span

CHUNKS, SENTENCES = "chunks", "sentences"
FORMAT = 3  # 1: one flat index folder without generations; 2: sentence vectors in Chroma too
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
    size: int | None = None  # bytes of its copy in docs/; absent in indexes built before it was recorded


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: IndexShape
    collections: dict[str, str]
    documents: dict[str, DocumentEntry]
    dimension: int | None = None

    @field_validator("documents")
    @classmethod
    def _ids_are_names(cls, documents: dict[str, DocumentEntry]) -> dict[str, DocumentEntry]:
        """An id is a file name or the ending of a path ('b/report.txt'), never a way out of docs/."""
        for doc_id in documents:
            parts = doc_id.split("/")
            if doc_id.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in doc_id:
                raise ValueError(f"{doc_id[:60]!r} is not a document name")
        return documents

    @field_validator("collections")
    @classmethod
    def _names_chunks(cls, collections: dict[str, str]) -> dict[str, str]:
        """The chunks' collection; an index of format 2 also names its sentences' (to be dropped)."""
        if CHUNKS not in collections or not set(collections) <= {CHUNKS, SENTENCES}:
            raise ValueError(f"names collections {sorted(collections)}, not {CHUNKS}")
        return collections


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
    sentences: list[Span]  # of every document, in (document, start) order
    vector_store: Any  # llama-index ChromaVectorStore over the chunks collection
    bm25: Any  # llama-index BM25Retriever over the chunks, checked against them
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
    return {CHUNKS: f"{CHUNKS}-{suffix}"}


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
    """The generation at `path`, checked as cheaply as it is read: each copy's size, the sentences
    and chunks cut from the copies, and the rows of Chroma and BM25, against the manifest."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from assistant.keywords import load_chunk_retriever

    root = settings.index_dir
    documents = {d: _copy_text(root, path, d, entry) for d, entry in manifest.documents.items()}
    client = chroma_client(settings, _writable_copy(root, path) if settings.chroma_url is None else path)
    names = manifest.collections
    sentences = {d: split_sentences(d, documents[d]) for d in sorted(documents)}
    chunks = chunks_of(documents, settings, sentences)
    chunk_collection = client.get_collection(names[CHUNKS])
    _check_counts(root, manifest, {CHUNKS: chunk_collection.count()}, "Chroma holds")
    _check_dimension(root, manifest, chunk_collection.get(limit=1, include=["embeddings"])["embeddings"])
    every = [s for split in sentences.values() for s in split]  # made in document order above
    _check_counts(root, manifest, {SENTENCES: len(every), CHUNKS: len(chunks)}, "its documents give")
    bm25 = _bm25_part(root, lambda: load_chunk_retriever(path / "bm25"))
    _check_bm25(root, bm25.bm25, manifest)
    return OpenIndex(
        documents=documents,
        chunks=chunks,
        sentences=every,
        vector_store=ChromaVectorStore(chroma_collection=chunk_collection),
        bm25=bm25,
        generation=path,
        chroma=client,
    )


def check_index(settings: Settings, live: Generation) -> None:
    """What `ask` would find wrong with `live`, found before `index` trusts it and without
    loading a model: each document copy against its hash, Chroma's and BM25's row counts and
    Chroma's dimension against the manifest."""
    import bm25s

    root, manifest = settings.index_dir, live.manifest
    if manifest is None:
        raise damaged(root, "its manifest is unreadable")
    for doc_id, entry in manifest.documents.items():
        data = _copy_bytes(root, live.path, doc_id)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise damaged(root, f"the copy of {shown(doc_id)} was changed")
    if settings.chroma_url is None:
        _chroma_folder(root, live.path)
    try:
        client = chroma_client(settings, live.path)
        try:
            chunks = client.get_collection(manifest.collections[CHUNKS])
            counts = {CHUNKS: chunks.count()}
            sample = chunks.get(limit=1, include=["embeddings"])["embeddings"]
        finally:
            client.close()
    except AssistantError:
        raise
    except Exception as e:  # chromadb raises many types on damaged files
        raise damaged(root, f"chroma: {_first_line(e)}") from None
    _check_counts(root, manifest, counts, "Chroma holds")
    _check_dimension(root, manifest, sample)
    folder = live.path / "bm25"
    bm25 = _bm25_part(root, lambda: bm25s.BM25.load(folder, load_corpus=True, allow_pickle=False, show_progress=False))
    _bm25_part(root, lambda: json.loads((folder / "retriever.json").read_bytes())["similarity_top_k"])
    _check_bm25(root, bm25, manifest)


def _check_dimension(root: Path, manifest: Manifest, sample: Any) -> None:
    """One stored vector (`sample`, as Chroma gets it) against the manifest's dimension."""
    if len(sample) and len(sample[0]) != manifest.dimension:
        raise damaged(root, f"Chroma holds {len(sample[0])}-dimension vectors, its manifest says {manifest.dimension}")


def _check_counts(root: Path, manifest: Manifest, counts: dict[str, int], holder: str) -> None:
    for kind, count in sorted(counts.items()):
        recorded = sum(getattr(entry, kind) for entry in manifest.documents.values())
        if count != recorded:
            raise damaged(root, f"{holder} {count} {kind}, the manifest {recorded}")


def _bm25_part(root: Path, read: Callable[[], Any]) -> Any:
    """`read()`, a damaged BM25 file its one-line error: never a pickle (bm25s loads arrays with
    allow_pickle=False), never a traceback."""
    try:
        return read()
    except Exception as e:  # bm25s, numpy and json raise many types on damaged files
        detail = "a file holds pickled data, which is never loaded" if "pickle" in str(e) else _first_line(e)
        raise damaged(root, f"bm25: {detail}") from None


def _check_bm25(root: Path, bm25: Any, manifest: Manifest) -> None:
    """bm25s's arrays agree with each other and its corpus with the manifest: a search over them
    cannot index out of range or cite a document the index does not hold."""
    scores, corpus = bm25.scores, bm25.corpus if isinstance(bm25.corpus, list) else []
    data, indices, indptr, rows = scores["data"], scores["indices"], scores["indptr"], scores["num_docs"]
    chunks = sum(entry.chunks for entry in manifest.documents.values())
    consistent = (
        len(data) == len(indices) and len(indptr) > 0 and indptr[-1] == len(data)
        and (len(indices) == 0 or 0 <= int(indices.min()) <= int(indices.max()) < rows)
        and max(bm25.vocab_dict.values(), default=0) < len(indptr)
    )
    if not consistent:
        raise damaged(root, "bm25: its arrays do not agree with each other")
    if rows != chunks or len(corpus) != chunks:
        raise damaged(root, f"bm25 holds {len(corpus)} chunks, the manifest {chunks}")
    if any(not isinstance(c, dict) or c.get(DOC_KEY) not in manifest.documents for c in corpus):
        raise damaged(root, "bm25 holds chunks of documents the manifest does not name")


def _copy_bytes(root: Path, path: Path, doc_id: str) -> bytes:
    try:
        return doc_path(path, doc_id).read_bytes()
    except FileNotFoundError:
        raise damaged(root, f"the copy of {shown(doc_id)} is missing") from None
    except OSError as e:
        raise damaged(root, f"the copy of {shown(doc_id)}: {e.strerror}") from None


def _copy_text(root: Path, path: Path, doc_id: str, entry: DocumentEntry) -> str:
    """A document's copy, checked against the manifest's size and hash (the sentences are cut
    from it; hashing 10 MB takes ~20 ms)."""
    data = _copy_bytes(root, path, doc_id)
    if (entry.size is not None and len(data) != entry.size) or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise AssistantError(f"the index at {root} does not match its documents; run 'assistant index --rebuild'")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(root, f"the copy of {shown(doc_id)} is not UTF-8") from None


def stored_chunks(path: Path, documents: dict[str, DocumentEntry], settings: Settings) -> list[Span]:
    """The chunks of a generation's document copies: cheaper to cut again than to store."""
    return chunks_of({doc_id: read_text(doc_path(path, doc_id)) for doc_id in documents}, settings)


def chunks_of(texts: dict[str, str], settings: Settings, sentences: dict[str, list[Span]] | None = None) -> list[Span]:
    """The chunks of `texts`, cut from their `sentences` when those were split already."""
    chunks: list[Span] = []
    for doc_id in sorted(texts):
        text = texts[doc_id]
        split = sentences[doc_id] if sentences is not None else split_sentences(doc_id, text)
        chunks += chunk_sentences(text, split, settings.chunk_tokens, settings.chunk_overlap)
    return chunks


def _chroma_folder(root: Path, generation: Path) -> Path:
    """The embedded Chroma's folder, which must be there: Chroma would make a new, empty one."""
    folder = generation / "chroma"
    if not folder.is_dir():
        raise damaged(root, "its chroma folder is missing")
    return folder


def _writable_copy(root: Path, generation: Path) -> Path:
    """`generation`, or when this process may not write there (a read-only disk or folder), a
    temporary copy of its Chroma files, deleted at exit: Chroma opens its database for writing
    even to read it."""
    folder = _chroma_folder(root, generation)
    if all(os.access(p, os.W_OK) for p in [folder, *folder.rglob("*")]):
        return generation
    try:
        copy = Path(tempfile.mkdtemp(prefix="assistant-index-"))
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        shutil.copytree(folder, copy / "chroma")
    except OSError as e:  # tempfile's FileNotFoundError when no folder is writable, or a full one
        raise AssistantError(
            f"the index at {root} is read-only and cannot be copied to a temporary folder to be read "
            f"({e.strerror or _first_line(e)}); set TMPDIR to a writable folder with space") from None
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
        finished = finished_generations(root)
        if finished:  # CURRENT lost, not a first build that never finished
            raise damaged(root, f"CURRENT is missing, {finished[0].name} is there")
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
    """Delete a generation: its collections on a Chroma server, then its files (an embedded
    Chroma's among them: opening a client there only to delete would write to it first)."""
    if settings.chroma_url is not None:
        try:
            client = chroma_client(settings, path)
            for name in collections.values():
                client.delete_collection(name)
        except Exception:  # a damaged generation being replaced by --rebuild: its files go all the same
            pass
    shutil.rmtree(path, ignore_errors=True)


def has_index(root: Path) -> bool:
    """Whether `root` holds an index, damaged or not (a folder this user may not enter: no)."""
    try:
        return (root / "CURRENT").exists() or bool(finished_generations(root))
    except OSError:
        return False


def finished_generations(root: Path) -> list[Path]:
    """Generations whose build wrote its manifest (its last step), newest first."""
    return [p for p in sorted(root.glob("gen-*"), reverse=True) if (p / "manifest.json").is_file()]


def remove_leftovers(root: Path, keep: list[Path], unfinished_only: bool = False) -> list[str]:
    """Delete every generation but `keep` (or only those whose build never finished: nothing
    points at them); the names of the finished ones deleted, which may have been readable."""
    finished = set(finished_generations(root))
    removed = []
    for path in sorted(root.glob("gen-*")):
        if path in keep or (unfinished_only and path in finished):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if path in finished:
            removed.append(path.name)
    (root / "CURRENT.tmp").unlink(missing_ok=True)
    return removed


def damaged(root: Path, e: Exception | str) -> AssistantError:
    return AssistantError(f"the index at {root} is damaged ({_first_line(e)}); run 'assistant index --rebuild'")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 4_000_000  # bytes free after a write failed for want of space: it used up the rest


def full_disk(folder: Path, e: Exception) -> AssistantError | None:
    """The error to give when `e` came from a full disk under `folder`: ENOSPC or a quota, as an
    OSError or in sqlite's words; or, since chromadb words it its own way ("Error in compaction"),
    any error while that disk has next to nothing free. None otherwise."""
    said = (isinstance(e, OSError) and e.errno in _DISK_FULL) or any(
        words in str(e) for words in ("database or disk is full", "No space left on device", "Disk quota exceeded"))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if not said and free >= _NEARLY_FULL:
        return None
    return AssistantError(f"the disk holding {folder} is full ({free // 1000} kB free; {_first_line(e)}); "
                          "nothing was changed: free some space and run this again")


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:120] if text else type(e).__name__


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((path / "manifest.json").read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise damaged(path.parent, ValueError(f"manifest: {where + ': ' if where else ''}{message}")) from None
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
