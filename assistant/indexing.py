"""Build the index: split documents, embed their chunks and sentences, write a new generation.

A build writes a new generation beside the live one and only then points CURRENT at it, so a build
that is killed leaves the previous index answering; the next build deletes what it left behind.
Does not read an index for answering or decide the on-disk layout (store.py); does not retrieve.
"""

import hashlib
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from assistant.chunking import chunk_sentences, split_sentences
from assistant.embedding import Embedder, shared_embedder
from assistant.errors import AssistantError
from assistant.keywords import chunk_retriever
from assistant.loading import Document, load_document, shown
from assistant.settings import Settings
from assistant.spans import Span
from assistant.store import (CHUNKS, DOC_KEY, DocumentEntry, Generation, IndexShape, Manifest, check_index,
                             chroma_client, collection_names, current_path, damaged, doc_path, drop,
                             finished_generations, full_disk, index_lock, index_shape, live_generation,
                             piece_metadata, point_at, read_manifest, remove_leftovers, stored_chunks, stored_ids,
                             write_manifest)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
_COPY_BATCH = 1000  # rows per Chroma get/add when carrying vectors into a new generation


@dataclass(frozen=True)
class IndexReport:
    indexed: tuple[str, ...]
    unchanged: tuple[str, ...]
    chunks: int
    sentences: int
    seconds: float
    notes: tuple[str, ...] = ()  # what a rebuild read from elsewhere, could not keep, or removed


def _noop(stage: str, done: int, total: int) -> None:
    return None


def index_documents(
    docs: list[Document], settings: Settings, progress: Progress = _noop, rebuild: bool = False
) -> IndexReport:
    """Add or update `docs`; a document whose content hash is already indexed costs nothing, once
    the index is checked (check_index). Built with other settings (or `rebuild`), the index is
    rebuilt, keeping its documents (those it cannot keep are named in the report's notes).
    Any change is written as a new generation; the live one is replaced only when that is complete."""
    began = time.perf_counter()
    root = settings.index_dir
    with index_lock(root):
        live, notes = _previous(root, rebuild)
        shape = index_shape(settings)
        reuse = live if live and live.manifest and not rebuild and live.manifest.shape == shape else None
        if reuse is not None:
            check_index(settings, reuse)
        docs = unique_ids(docs, live.documents if live else {})
        if reuse is None and live is not None:
            held, lost = _held_documents(live, docs, settings.max_file_mb)
            docs, notes = held + docs, notes + lost
        known = reuse.documents if reuse else {}
        todo = [d for d in _last_of_each(docs) if d.doc_id not in known or known[d.doc_id].sha256 != d.sha256]
        unchanged = tuple(d.doc_id for d in docs if d not in todo)
        documents = dict(known)
        if todo:
            documents, removed = _replace_live(root, live, settings, shape, reuse, todo, progress)
            notes += [f"removed {name}, a generation of this index that CURRENT did not name" for name in removed]
        elif live is not None and reuse is None:
            raise AssistantError(f"nothing to rebuild the index at {root} from: {'; '.join(notes) or 'no documents'}")
    return IndexReport(
        indexed=tuple(d.doc_id for d in todo),
        unchanged=unchanged,
        chunks=sum(v.chunks for v in documents.values()),
        sentences=sum(v.sentences for v in documents.values()),
        seconds=time.perf_counter() - began,
        notes=tuple(notes),
    )


def _replace_live(root: Path, live: Generation | None, settings: Settings, shape: IndexShape, reuse: Generation | None,
                  todo: list[Document], progress: Progress) -> tuple[dict[str, DocumentEntry], list[str]]:
    """Build a new generation and make it the live one; the documents it holds, and the names of
    finished generations other than `live` that were removed once it was live."""
    remove_leftovers(root, [live.path] if live else [], unfinished_only=True)
    name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    try:
        built = _build(root / name, settings, shape, reuse, todo, progress)
        point_at(root, name)
    except BaseException as e:  # a refusal, a crash, a full disk or a signal: the live index stays
        full = full_disk(root, e) if isinstance(e, Exception) and not isinstance(e, AssistantError) else None
        if not _is_live(root, name):
            drop(settings, root / name, collection_names(name))
        if full is not None:  # not damage: the live index is intact, the disk is what to fix
            raise full from None
        raise
    if live is not None:
        drop(settings, live.path, live.manifest.collections if live.manifest else {})
    return built.documents, remove_leftovers(root, [root / name])


def _is_live(root: Path, name: str) -> bool:
    try:
        return current_path(root) == root / name
    except AssistantError:  # CURRENT damaged: it names no generation
        return False


def unique_ids(docs: list[Document], indexed: dict[str, DocumentEntry]) -> list[Document]:
    """`docs` with ids no other file holds: a file indexed before keeps its id; a new one gets its
    name, or when another file (indexed, or earlier in `docs`) holds that, the shortest ending of
    its path that none holds ('b/report.txt'). An id indexed without a recorded path (older
    indexes) is taken to be the file of that name."""
    holder = {doc_id: entry.path or None for doc_id, entry in indexed.items()}
    known = {path: doc_id for doc_id, path in holder.items() if path}
    out = []
    for doc in docs:
        if not doc.path:
            out.append(doc)
            continue
        if doc.path not in known:
            parts = Path(doc.path).parts
            endings = ["/".join(parts[-k:]) for k in range(1, len(parts))] or [doc.doc_id]
            known[doc.path] = next((e for e in endings if holder.get(e, doc.path) in (None, doc.path)), doc.path)
            holder[known[doc.path]] = doc.path
        out.append(replace(doc, doc_id=known[doc.path]))
    return out


def _previous(root: Path, rebuild: bool) -> tuple[Generation | None, list[str]]:
    """The live generation to build on. With `rebuild`, a damaged index's generation to take
    documents from: the one CURRENT names, else (CURRENT lost) the newest finished one, its
    manifest None when that is unreadable; a note when it is not the one CURRENT names."""
    try:
        return live_generation(root), []
    except AssistantError:
        if not rebuild:
            raise
    try:
        path = current_path(root)
    except AssistantError:
        path = None
    notes = []
    if path is None or not path.is_dir():
        finished = finished_generations(root)
        if not finished:
            return None, []
        path = finished[0]
        notes.append(f"CURRENT names no generation: {path.name}, the newest finished one, is rebuilt and replaced")
    try:
        manifest: Manifest | None = read_manifest(path)
    except AssistantError:
        manifest = None
    return Generation(path, manifest), notes


def _build(
    path: Path, settings: Settings, shape: IndexShape, reuse: Generation | None, todo: list[Document],
    progress: Progress,
) -> Generation:
    """A complete new generation at `path`: the documents of `reuse` not in `todo` carried over, `todo` embedded."""
    embedder = shared_embedder(settings.embedding_path(), settings.embed_batch_size)
    (path / "docs").mkdir(parents=True)
    client = chroma_client(settings, path)
    # Closed before the folder is deleted or replaced: nothing of Chroma's writes there afterwards.
    try:
        built = _fill(path, settings, shape, reuse, todo, progress, embedder, client)
    except BaseException:
        with suppress(Exception):  # the failure (or signal) that got here is the one to report
            client.close()
        raise
    client.close()
    return built


def _fill(path: Path, settings: Settings, shape: IndexShape, reuse: Generation | None, todo: list[Document],
          progress: Progress, embedder: Embedder, client: Any) -> Generation:
    names = collection_names(path.name)
    collections = {CHUNKS: client.get_or_create_collection(names[CHUNKS], metadata={"hnsw:space": "cosine"})}
    replaced = {d.doc_id for d in todo}
    documents = {d: v for d, v in reuse.documents.items() if d not in replaced} if reuse else {}
    if reuse is not None:
        _carry_over(settings, reuse, path, collections, sorted(documents))
    pieces: list[Span] = []
    for n, doc in enumerate(todo, start=1):
        sentences = split_sentences(doc.doc_id, doc.text)
        chunks = chunk_sentences(doc.text, sentences, settings.chunk_tokens, settings.chunk_overlap)
        doc_path(path, doc.doc_id).write_text(doc.text, encoding="utf-8", newline="")
        pieces += chunks
        documents[doc.doc_id] = DocumentEntry(sha256=doc.sha256, chunks=len(chunks), sentences=len(sentences),
                                              path=doc.path, size=len(doc.text.encode()))
        progress("Splitting documents", n, len(todo))
    _add(collections[CHUNKS], pieces, embedder, settings.embed_batch_size, progress)
    manifest = Manifest(shape=shape, collections=names, documents=documents, dimension=embedder.dimension)
    _write_bm25(path, stored_chunks(path, documents, settings), progress)
    write_manifest(path, manifest)
    return Generation(path, manifest)


def _carry_over(settings: Settings, old: Generation, path: Path, collections: dict[str, Any],
                doc_ids: list[str]) -> None:
    """Copy the kept documents' text and vectors from `old` (checked by check_index): nothing is
    embedded again. Only a failure to read `old` is damage; one to write (a full disk) is not."""
    if not doc_ids or old.manifest is None:
        return
    for doc_id in doc_ids:
        shutil.copyfile(doc_path(old.path, doc_id), doc_path(path, doc_id))
    client = chroma_client(settings, old.path)
    try:
        for kind, target in collections.items():
            for got in _old_rows(settings, client, old.manifest.collections[kind], doc_ids):
                target.add(ids=got["ids"], embeddings=got["embeddings"], metadatas=got["metadatas"],
                           documents=got["documents"])
    finally:
        client.close()


def _old_rows(settings: Settings, client: Any, name: str, doc_ids: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of `doc_ids` in the collection `name`, a batch at a time; a failure to read them
    is damage (a failure of the caller's writes never passes through here)."""
    try:
        source = client.get_collection(name)
        for offset in range(0, source.count(), _COPY_BATCH):
            got = source.get(where={DOC_KEY: {"$in": doc_ids}}, include=["embeddings", "metadatas", "documents"],
                             limit=_COPY_BATCH, offset=offset)
            if got["ids"]:
                yield got
    except Exception as e:  # chromadb raises many types on damaged files, and on a full disk
        raise full_disk(settings.index_dir, e) or damaged(settings.index_dir, e) from None


def _last_of_each(docs: list[Document]) -> list[Document]:
    return list({d.doc_id: d for d in docs}.values())


def _add(collection: Any, pieces: list[Span], embedder: Embedder, batch: int, progress: Progress) -> None:
    """Embed and store every chunk, all documents together (a batch per file would cost a model
    call and a Chroma write each, which dominate for many small files); a text that recurs is
    embedded once."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    store = ChromaVectorStore(chroma_collection=collection)
    stage = "Embedding chunks"
    embedded: dict[str, list[float]] = {}
    # A batch is padded to its longest text: batches of similar lengths cost ~15% less CPU.
    pieces = sorted(pieces, key=lambda p: len(p.text))
    progress(stage, 0, len(pieces))
    for i in range(0, len(pieces), batch):
        nodes = [piece_node(p) for p in pieces[i : i + batch]]
        new = list(dict.fromkeys(n.text for n in nodes if n.text not in embedded))
        embedded.update(zip(new, (v.tolist() for v in embedder.embed_texts(new)) if new else ()))
        for node in nodes:
            node.embedding = embedded[node.text]
        store.add(nodes)
        progress(stage, i + len(nodes), len(pieces))


def _write_bm25(path: Path, chunks: list[Span], progress: Progress) -> None:
    progress("Building BM25", 0, 1)
    retriever = chunk_retriever([piece_node(c) for c in chunks])
    retriever.persist(str(path / "bm25"), show_progress=False)  # bm25s draws a bar on stderr otherwise
    progress("Building BM25", 1, 1)


def piece_node(piece: Span) -> Any:
    """A llama-index node for a chunk or sentence; its metadata carries the character offsets."""
    from llama_index.core.schema import TextNode

    metadata = piece_metadata(piece)
    return TextNode(
        id_=f"{piece.doc_id}:{piece.start}:{piece.end}",
        text=piece.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=list(metadata),
    )


def _held_documents(old: Generation, fresh: list[Document], max_mb: float) -> tuple[list[Document], list[str]]:
    """The documents `old` held that `fresh` does not replace, to be indexed again: from its copy
    when that is intact (the exact text indexed), else from the file it was read from. Copies its
    manifest does not name (another index's manifest) are kept too. A note for each document
    read from elsewhere than an intact copy, and for each that cannot be read at all."""
    replaced = {d.doc_id for d in fresh}
    named = old.manifest.documents if old.manifest else {}
    held: dict[str, DocumentEntry | None] = {**dict.fromkeys(stored_ids(old.path)), **named}
    docs, notes = [], []
    for doc_id, entry in held.items():
        if doc_id in replaced:
            continue
        copy, state = _intact_copy(old.path, doc_id, entry)
        if copy is not None:
            docs.append(copy)
            if old.manifest is not None and entry is None:
                notes.append(f"{shown(doc_id)}: kept from its copy in the index, which its manifest does not name")
            continue
        source, why = _from_source(doc_id, entry, max_mb)
        if source is not None:
            docs.append(source)
            notes.append(f"{shown(doc_id)}: its copy in the index was {state}; read again from {shown(source.path)}")
        else:
            notes.append(f"cannot rebuild {shown(doc_id)}: its copy in the index is {state}, and {why}")
    return docs, notes


def _intact_copy(path: Path, doc_id: str, entry: DocumentEntry | None) -> tuple[Document | None, str]:
    """The document as its copy holds it, or None and what is wrong with the copy."""
    try:
        data = doc_path(path, doc_id).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror})"
    sha256 = hashlib.sha256(data).hexdigest()
    if entry is not None and sha256 != entry.sha256:
        return None, "changed"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    return Document(doc_id, text, sha256, entry.path if entry else ""), ""


def _from_source(doc_id: str, entry: DocumentEntry | None, max_mb: float) -> tuple[Document | None, str]:
    """The document read again from the file it was indexed from, under its old id; or None and why not."""
    if entry is None or not entry.path or not Path(entry.path).is_absolute():
        return None, "the index does not record the file it came from"
    try:
        return replace(load_document(Path(entry.path), max_mb), doc_id=doc_id, path=entry.path), ""
    except AssistantError as e:
        return None, f"its file cannot be read ({e})"
