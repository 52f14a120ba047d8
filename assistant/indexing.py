"""Build and open the on-disk index: Chroma vectors for chunks and sentences, BM25 beside them.

Does not retrieve. Layout under settings.index_dir:
  CURRENT        the name of the live generation, replaced atomically once a build is complete
  lock           held (flock) by the one `assistant index` that may write here
  gen-<id>/      one complete generation:
    manifest.json  the settings it was built with, its Chroma collection names, per document its hash
    docs/          the exact text every citation offset refers to
    chroma/        persistent Chroma: collections `chunks-<id>` and `sentences-<id>`
    bm25/          llama-index BM25 retriever over the chunks
A build writes a new generation beside the live one and only then points CURRENT at it, so a build
that is killed leaves the previous index answering; the next build deletes what it left behind.
With settings.chroma_url the collections live on that Chroma server instead of in chroma/;
everything else stays in index_dir.
"""

import atexit
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from assistant.chunking import Chunk, Span, chunk_sentences, split_sentences
from assistant.embedding import Embedder, embedding_identity
from assistant.errors import AssistantError
from assistant.loading import Document, shown
from assistant.settings import Settings

Progress = Callable[[str, int, int], None]  # (stage, done, total)
CHUNKS, SENTENCES = "chunks", "sentences"
FORMAT = 2  # 1: one flat index folder, collections `chunks` and `sentences`
_GENERATION = re.compile(r"gen-[0-9a-z-]+")
_LEGACY = ("manifest.json", "docs", "chroma", "bm25")  # format 1, straight under the index folder
_COPY_BATCH = 1000  # rows per Chroma get/add when carrying vectors into a new generation


@dataclass(frozen=True)
class Sentence:
    doc_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class IndexReport:
    indexed: tuple[str, ...]
    unchanged: tuple[str, ...]
    chunks: int
    sentences: int
    seconds: float


@dataclass
class OpenIndex:
    """Everything retrieval needs, loaded once."""

    documents: dict[str, str]
    chunks: list[Chunk]
    sentences: list[Sentence]
    sentence_vectors: np.ndarray
    vector_store: Any  # llama-index ChromaVectorStore over the chunks collection
    bm25_dir: Path


@dataclass(frozen=True)
class Generation:
    """One complete index: its folder and its manifest."""

    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.path.name


def _noop(stage: str, done: int, total: int) -> None:
    return None


def index_shape(settings: Settings) -> dict:
    """What an index's contents depend on: an index built with anything else must be rebuilt."""
    shape = {
        "embedding": embedding_identity(settings.embedding_path()),
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
        "format": FORMAT,
    }
    if settings.chroma_url:  # vectors on a server are another index than those in index_dir
        shape["chroma_url"] = str(settings.chroma_url)
    return shape


def index_documents(
    docs: list[Document], settings: Settings, progress: Progress = _noop, rebuild: bool = False
) -> IndexReport:
    """Add or update `docs`; a document whose content hash is already indexed costs nothing.
    Built with other settings (or `rebuild`), the index is rebuilt, keeping its documents.
    Any change is written as a new generation; the live one is replaced only when that is complete."""
    began = time.perf_counter()
    root = settings.index_dir
    with index_lock(root):
        live = _previous(root, rebuild)
        shape = index_shape(settings)
        reuse = live if live and not rebuild and live.manifest.get("shape") == shape else None
        docs = unique_ids(docs, live.manifest.get("documents", {}) if live else {})
        if reuse is None and live is not None:
            docs = _stored_documents(live, docs) + docs
        known = reuse.manifest["documents"] if reuse else {}
        todo = [d for d in _last_of_each(docs) if known.get(d.doc_id, {}).get("sha256") != d.sha256]
        unchanged = tuple(d.doc_id for d in docs if d not in todo)
        documents = dict(known)
        if todo:
            _remove_leftovers(root, live)
            name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
            try:
                built = _build(root / name, settings, shape, reuse, todo, progress)
            except BaseException:  # a refusal, a crash or Ctrl-C: the live index stays, nothing half-built
                _drop(settings, root, Generation(root / name, {"collections": _collection_names(name)}))
                raise
            _point_at(root, built.name)
            if live is not None:
                _drop(settings, root, live)
            documents = built.manifest["documents"]
    return IndexReport(
        indexed=tuple(d.doc_id for d in todo),
        unchanged=unchanged,
        chunks=sum(v["chunks"] for v in documents.values()),
        sentences=sum(v["sentences"] for v in documents.values()),
        seconds=time.perf_counter() - began,
    )


def unique_ids(docs: list[Document], indexed: dict[str, dict]) -> list[Document]:
    """`docs` with ids no other file holds: a file indexed before keeps its id; a new one gets its
    name, or when another file (indexed, or earlier in `docs`) holds that, the shortest ending of
    its path that none holds ('b/report.txt'). An id indexed without a recorded path (older
    indexes) is taken to be the file of that name."""
    holder = {doc_id: entry.get("source") or None for doc_id, entry in indexed.items()}
    known = {source: doc_id for doc_id, source in holder.items() if source}
    out = []
    for doc in docs:
        if not doc.source:
            out.append(doc)
            continue
        if doc.source not in known:
            parts = Path(doc.source).parts
            endings = ["/".join(parts[-k:]) for k in range(1, len(parts))] or [doc.doc_id]
            known[doc.source] = next((e for e in endings if holder.get(e, doc.source) in (None, doc.source)), doc.source)
            holder[known[doc.source]] = doc.source
        out.append(replace(doc, doc_id=known[doc.source]))
    return out


@contextmanager
def index_lock(root: Path) -> Iterator[None]:
    """Only one writer per index. flock dies with its process, so a killed build leaves no stale lock."""
    _check_folder(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / "lock", "a+", encoding="utf-8")
    except OSError as e:
        raise AssistantError(f"cannot write to the index folder {shown(root)} ({e.strerror}); pass another --index-dir") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AssistantError(
                f"another 'assistant index' is running on {root} (pid {holder}); wait for it to finish, then run this again"
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


def _check_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise AssistantError(f"the index folder {shown(root)} is a file, not a folder; pass another --index-dir")


def _previous(root: Path, rebuild: bool) -> Generation | None:
    """The live generation (or a format-1 index) to build on; with `rebuild`, a damaged one is only
    a source of document copies."""
    try:
        live = _live(root)
        if live is None and (root / "manifest.json").exists():
            return Generation(root, _read_manifest(root))
        return live
    except AssistantError:
        if not rebuild:
            raise
    try:
        path = _current_path(root)
    except AssistantError:
        return None
    return Generation(path, {}) if path is not None and path.is_dir() else None


def _build(
    path: Path, settings: Settings, shape: dict, reuse: Generation | None, todo: list[Document], progress: Progress
) -> Generation:
    """A complete new generation at `path`: the documents of `reuse` not in `todo` carried over, `todo` embedded."""
    embedder = Embedder(settings.embedding_path(), settings.embed_batch_size)
    (path / "docs").mkdir(parents=True)
    manifest = {"shape": shape, "collections": _collection_names(path.name), "documents": {}}
    client = chroma_client(settings, path)
    collections = {kind: client.get_or_create_collection(manifest["collections"][kind], metadata={"hnsw:space": "cosine"})
                   for kind in (CHUNKS, SENTENCES)}
    replaced = {d.doc_id for d in todo}
    if reuse is not None:
        kept = {d: v for d, v in reuse.manifest["documents"].items() if d not in replaced}
        _carry_over(settings, reuse, path, collections, sorted(kept))
        manifest["documents"].update(kept)
    pieces: dict[str, list[tuple[str, Any]]] = {CHUNKS: [], SENTENCES: []}
    for n, doc in enumerate(todo, start=1):
        sentences = split_sentences(doc.text)
        chunks = chunk_sentences(doc.text, doc.doc_id, sentences, settings.chunk_tokens, settings.chunk_overlap)
        _doc_path(path, doc.doc_id).write_text(doc.text, encoding="utf-8", newline="")
        pieces[CHUNKS] += [(doc.doc_id, c) for c in chunks]
        pieces[SENTENCES] += [(doc.doc_id, x) for x in sentences]
        manifest["documents"][doc.doc_id] = {"sha256": doc.sha256, "chunks": len(chunks), "sentences": len(sentences),
                                             "source": doc.source}
        progress("Splitting documents", n, len(todo))
    embedded: dict[str, list[float]] = {}  # a one-sentence chunk is that sentence: embedded once
    for kind in (SENTENCES, CHUNKS):
        _add(collections[kind], kind, pieces[kind], embedder, settings.embed_batch_size, progress, embedded)
    manifest["dimension"] = embedder.dimension
    _write_bm25(path, _all_chunks(path, manifest["documents"], settings), progress)
    _write_json(path / "manifest.json", manifest)
    return Generation(path, manifest)


def _collection_names(generation: str) -> dict[str, str]:
    suffix = generation[len("gen-") :]
    return {CHUNKS: f"{CHUNKS}-{suffix}", SENTENCES: f"{SENTENCES}-{suffix}"}


def _carry_over(settings: Settings, old: Generation, path: Path, collections: dict[str, Any], doc_ids: list[str]) -> None:
    """Copy the kept documents' text and vectors from `old`: nothing is embedded again."""
    if not doc_ids:
        return
    for doc_id in doc_ids:
        shutil.copyfile(_doc_path(old.path, doc_id), _doc_path(path, doc_id))
    try:
        client = chroma_client(settings, old.path)
        for kind, target in collections.items():
            source = client.get_collection(old.manifest["collections"][kind])
            for offset in range(0, source.count(), _COPY_BATCH):
                got = source.get(where={"source": {"$in": doc_ids}}, include=["embeddings", "metadatas", "documents"],
                                 limit=_COPY_BATCH, offset=offset)
                if got["ids"]:
                    target.add(ids=got["ids"], embeddings=got["embeddings"], metadatas=got["metadatas"],
                               documents=got["documents"])
    except Exception as e:  # chromadb raises many types on damaged files
        raise _damaged(settings.index_dir, e) from None


def _last_of_each(docs: list[Document]) -> list[Document]:
    return list({d.doc_id: d for d in docs}.values())


def _add(collection: Any, kind: str, pieces: list[tuple[str, Any]], embedder: Embedder, batch: int,
         progress: Progress, embedded: dict[str, list[float]]) -> None:
    """Embed and store every (document, piece), all documents together (a batch per file would
    cost a model call and a Chroma write each, which dominate for many small files); texts in
    `embedded` are not embedded again, and new ones are added to it."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    store = ChromaVectorStore(chroma_collection=collection)
    stage = f"Embedding {kind}"
    # A batch is padded to its longest text: batches of similar lengths cost ~15% less CPU.
    pieces = sorted(pieces, key=lambda p: len(p[1].text))
    progress(stage, 0, len(pieces))
    for i in range(0, len(pieces), batch):
        nodes = [piece_node(doc_id, p) for doc_id, p in pieces[i : i + batch]]
        new = list(dict.fromkeys(n.text for n in nodes if n.text not in embedded))
        embedded.update(zip(new, (v.tolist() for v in embedder.embed_texts(new)) if new else ()))
        for node in nodes:
            node.embedding = embedded[node.text]
        store.add(nodes)
        progress(stage, i + len(nodes), len(pieces))


def _all_chunks(path: Path, known: dict, settings: Settings) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc_id in sorted(known):
        text = _read_text(_doc_path(path, doc_id))
        chunks += chunk_sentences(text, doc_id, split_sentences(text), settings.chunk_tokens, settings.chunk_overlap)
    return chunks


def _write_bm25(path: Path, chunks: list[Chunk], progress: Progress) -> None:
    from llama_index.retrievers.bm25 import BM25Retriever

    progress("Building BM25", 0, 1)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # bm25s divides by zero before it gives up
            retriever = BM25Retriever.from_defaults(nodes=[piece_node(c.doc_id, c) for c in chunks],
                                                    similarity_top_k=len(chunks))
    except ValueError:  # bm25s, when no text has a word it keeps
        raise AssistantError("no document has a word keyword search can index (only stop words?)") from None
    retriever.persist(str(path / "bm25"), show_progress=False)  # bm25s draws a bar on stderr otherwise
    progress("Building BM25", 1, 1)


def piece_node(doc_id: str, piece: Chunk | Span) -> Any:
    """A llama-index node for a chunk or sentence; its metadata carries the character offsets."""
    from llama_index.core.schema import TextNode

    keys = ["source", "start", "end"]  # llama-index reserves "doc_id" for its own use
    return TextNode(
        id_=f"{doc_id}:{piece.start}:{piece.end}",
        text=piece.text,
        metadata={"source": doc_id, "start": piece.start, "end": piece.end},
        excluded_embed_metadata_keys=keys,
        excluded_llm_metadata_keys=keys,
    )


def chroma_client(settings: Settings, generation: Path) -> Any:
    """The one place a Chroma client is made: embedded, its files inside the generation's folder,
    or the server at settings.chroma_url; no telemetry either way."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    quiet = ChromaSettings(anonymized_telemetry=False)
    url = settings.chroma_url
    if url is None:
        return chromadb.PersistentClient(path=str(generation / "chroma"), settings=quiet)
    _check_chroma_server(str(url).rstrip("/"), settings.server_timeout)
    try:
        return chromadb.HttpClient(host=str(url.host), port=url.port or 8000, ssl=url.scheme == "https", settings=quiet)
    except Exception as e:  # chromadb wraps connection failures in ValueError, others in its own types
        raise AssistantError(f"cannot use the Chroma server at {url} ({e})") from None


def _check_chroma_server(url: str, timeout: float) -> None:
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
    _check_folder(root)
    live = _live(root)
    if live is None:
        if (root / "manifest.json").exists():
            raise AssistantError(f"the index at {root} has an older layout; run 'assistant index --rebuild'")
        raise AssistantError(f"no index at {root}; run 'assistant index' first")
    if settings.chroma_url:  # an unreachable server first: a mistyped URL also changes the shape
        _check_chroma_server(str(settings.chroma_url).rstrip("/"), settings.server_timeout)
    _check_shape(root, live.manifest, index_shape(settings))
    try:
        return _load(live, settings)
    except AssistantError:
        raise
    except Exception as e:  # chromadb and bm25s raise many types on damaged files
        if settings.chroma_url:
            raise AssistantError(
                f"the Chroma server at {settings.chroma_url} does not hold the index of {root} ({type(e).__name__}); "
                "run 'assistant index --rebuild'"
            ) from None
        if not retry or _current_path(root) == live.path:
            raise _damaged(root, e) from None
    return open_index(settings, retry=False)  # a build replaced the generation while it was being read


def _check_shape(root: Path, manifest: dict, wanted: dict) -> None:
    built = manifest.get("shape")
    if not isinstance(built, dict):
        raise _damaged(root, ValueError("no settings in the manifest"))
    differ = [f"{k} {built.get(k)!s}, not {wanted.get(k)!s}" for k in sorted(wanted.keys() | built.keys())
              if built.get(k) != wanted.get(k)]
    if differ:
        raise AssistantError(
            f"the index at {root} was built with other settings ({'; '.join(differ)}); run 'assistant index --rebuild'"
        )


def _load(live: Generation, settings: Settings) -> OpenIndex:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    manifest = live.manifest
    documents = {d: _read_text(_doc_path(live.path, d)) for d in manifest["documents"]}
    client = chroma_client(settings, _writable_copy(live.path) if settings.chroma_url is None else live.path)
    names = manifest["collections"]
    got = client.get_collection(names[SENTENCES]).get(include=["embeddings", "metadatas", "documents"])
    order = sorted(range(len(got["ids"])), key=lambda i: (got["metadatas"][i]["source"], got["metadatas"][i]["start"]))
    sentences = [_sentence(got["metadatas"][i], got["documents"][i]) for i in order]
    for s in sentences:
        if documents[s.doc_id][s.start : s.end] != s.text:
            raise AssistantError(f"the index at {settings.index_dir} does not match its documents; run 'assistant index --rebuild'")
    vectors = np.asarray(got["embeddings"], dtype=np.float32)[order] if order else np.zeros((0, 1), np.float32)
    if order and vectors.shape[1] != manifest.get("dimension"):
        raise AssistantError(
            f"the index at {settings.index_dir} holds {vectors.shape[1]}-dimension vectors, not the "
            f"{manifest.get('dimension')} its manifest says; run 'assistant index --rebuild'"
        )
    return OpenIndex(
        documents=documents,
        chunks=_all_chunks(live.path, manifest["documents"], settings),
        sentences=sentences,
        sentence_vectors=vectors,
        vector_store=ChromaVectorStore(chroma_collection=client.get_collection(names[CHUNKS])),
        bm25_dir=live.path / "bm25",
    )


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


def _sentence(meta: dict, text: str) -> Sentence:
    return Sentence(str(meta["source"]), int(meta["start"]), int(meta["end"]), text)


def _current_path(root: Path) -> Path | None:
    """The folder CURRENT names, or None when there is no CURRENT; a bad name is damage."""
    try:
        name = (root / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _damaged(root, e) from None
    if not _GENERATION.fullmatch(name):
        raise _damaged(root, ValueError(f"CURRENT names {name[:40]!r}"))
    return root / name


def _live(root: Path) -> Generation | None:
    path = _current_path(root)
    if path is None:
        return None
    if not path.is_dir():
        raise _damaged(root, ValueError(f"CURRENT names {path.name}, which is missing"))
    return Generation(path, _read_manifest(path))


def _point_at(root: Path, name: str) -> None:
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


def _drop(settings: Settings, root: Path, old: Generation) -> None:
    """Delete a replaced generation: its Chroma collections, then its files."""
    try:
        client = chroma_client(settings, old.path)
        for name in old.manifest.get("collections", {}).values():
            client.delete_collection(name)
    except Exception:  # a damaged generation being replaced by --rebuild: its files go all the same
        pass
    if old.path == root:  # format 1 kept its files straight in the index folder
        for name in _LEGACY:
            _remove(root / name)
    else:
        shutil.rmtree(old.path, ignore_errors=True)


def _remove_leftovers(root: Path, live: Generation | None) -> None:
    """Generations that a killed build left unfinished: nothing points at them."""
    for path in root.glob("gen-*"):
        if live is None or path != live.path:
            shutil.rmtree(path, ignore_errors=True)
    _remove(root / "CURRENT.tmp")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _damaged(root: Path, e: Exception) -> AssistantError:
    detail = str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__
    return AssistantError(f"the index at {root} is damaged ({detail}); run 'assistant index --rebuild'")


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("documents"), dict):
            raise ValueError("no document list")
        if path.name.startswith("gen-") and not isinstance(manifest.get("collections"), dict):
            raise ValueError("no collection names")
        return manifest
    except (OSError, ValueError) as e:
        raise _damaged(path.parent if path.name.startswith("gen-") else path, e) from None


def _read_text(path: Path) -> str:
    """Byte-exact: read_text() would turn CRLF into LF and shift every offset after it."""
    return path.read_bytes().decode("utf-8")


def _doc_path(path: Path, doc_id: str) -> Path:
    return path / "docs" / f"{_file_name(doc_id)}.txt"


def _file_name(doc_id: str) -> str:
    """An id as one file name: 'b/report.txt' -> 'b%2Freport.txt'."""
    return doc_id.replace("%", "%25").replace("/", "%2F")


def _doc_id(file_name: str) -> str:
    return re.sub("%(25|2F)", lambda m: {"25": "%", "2F": "/"}[m.group(1)], file_name)


def _stored_documents(live: Generation, fresh: list[Document]) -> list[Document]:
    """Documents already indexed that are not being replaced, reread from the index's copies."""
    replaced = {d.doc_id for d in fresh}
    entries = live.manifest.get("documents", {})
    stored = sorted((live.path / "docs").glob("*.txt")) if (live.path / "docs").is_dir() else []
    docs = []
    for copy in stored:
        doc_id, text = _doc_id(copy.name[: -len(".txt")]), _read_text(copy)
        if doc_id not in replaced:
            source = entries.get(doc_id, {}).get("source", "") if isinstance(entries.get(doc_id), dict) else ""
            docs.append(Document(doc_id, text, hashlib.sha256(text.encode()).hexdigest(), source))
    return docs


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)
