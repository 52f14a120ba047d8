"""Build the index: split documents, embed their chunks and sentences, write a new generation.

A build writes a new generation beside the live one and only then points CURRENT at it, so a build
that is killed leaves the previous index answering; the next build deletes what it left behind.
Does not read an index for answering or decide the on-disk layout (store.py); does not retrieve.
"""

import hashlib
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from assistant.chunking import chunk_sentences, split_sentences
from assistant.embedding import Embedder
from assistant.errors import AssistantError
from assistant.keywords import chunk_retriever
from assistant.loading import Document
from assistant.settings import Settings
from assistant.spans import Span
from assistant.store import (CHUNKS, DOC_KEY, SENTENCES, DocumentEntry, Generation, IndexShape, Manifest, chroma_client,
                             collection_names, current_path, damaged, doc_path, drop, index_lock, index_shape,
                             live_generation, piece_metadata, point_at, read_text, remove_leftovers, stored_chunks,
                             stored_ids, write_manifest)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
_COPY_BATCH = 1000  # rows per Chroma get/add when carrying vectors into a new generation


@dataclass(frozen=True)
class IndexReport:
    indexed: tuple[str, ...]
    unchanged: tuple[str, ...]
    chunks: int
    sentences: int
    seconds: float


def _noop(stage: str, done: int, total: int) -> None:
    return None


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
        reuse = live if live and live.manifest and not rebuild and live.manifest.shape == shape else None
        docs = unique_ids(docs, live.documents if live else {})
        if reuse is None and live is not None:
            docs = _stored_documents(live, docs) + docs
        known = reuse.documents if reuse else {}
        todo = [d for d in _last_of_each(docs) if d.doc_id not in known or known[d.doc_id].sha256 != d.sha256]
        unchanged = tuple(d.doc_id for d in docs if d not in todo)
        documents = dict(known)
        if todo:
            documents = _replace_live(root, live, settings, shape, reuse, todo, progress)
    return IndexReport(
        indexed=tuple(d.doc_id for d in todo),
        unchanged=unchanged,
        chunks=sum(v.chunks for v in documents.values()),
        sentences=sum(v.sentences for v in documents.values()),
        seconds=time.perf_counter() - began,
    )


def _replace_live(root: Path, live: Generation | None, settings: Settings, shape: IndexShape,
                  reuse: Generation | None, todo: list[Document], progress: Progress) -> dict[str, DocumentEntry]:
    """Build a new generation and make it the live one; the documents it holds."""
    remove_leftovers(root, live)
    name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    try:
        built = _build(root / name, settings, shape, reuse, todo, progress)
    except BaseException:  # a refusal, a crash or Ctrl-C: the live index stays, nothing half-built
        drop(settings, root / name, collection_names(name))
        raise
    point_at(root, name)
    if live is not None:
        drop(settings, live.path, live.manifest.collections if live.manifest else {})
    return built.documents


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


def _previous(root: Path, rebuild: bool) -> Generation | None:
    """The live generation to build on; with `rebuild`, a damaged one is only a source of
    document copies (its manifest None)."""
    try:
        return live_generation(root)
    except AssistantError:
        if not rebuild:
            raise
    try:
        path = current_path(root)
    except AssistantError:
        return None
    return Generation(path, None) if path is not None and path.is_dir() else None


def _build(
    path: Path, settings: Settings, shape: IndexShape, reuse: Generation | None, todo: list[Document],
    progress: Progress,
) -> Generation:
    """A complete new generation at `path`: the documents of `reuse` not in `todo` carried over, `todo` embedded."""
    embedder = Embedder(settings.embedding_path(), settings.embed_batch_size)
    (path / "docs").mkdir(parents=True)
    names = collection_names(path.name)
    client = chroma_client(settings, path)
    collections = {kind: client.get_or_create_collection(names[kind], metadata={"hnsw:space": "cosine"})
                   for kind in (CHUNKS, SENTENCES)}
    replaced = {d.doc_id for d in todo}
    documents = {d: v for d, v in reuse.documents.items() if d not in replaced} if reuse else {}
    if reuse is not None:
        _carry_over(settings, reuse, path, collections, sorted(documents))
    pieces: dict[str, list[Span]] = {CHUNKS: [], SENTENCES: []}
    for n, doc in enumerate(todo, start=1):
        sentences = split_sentences(doc.doc_id, doc.text)
        chunks = chunk_sentences(doc.text, sentences, settings.chunk_tokens, settings.chunk_overlap)
        doc_path(path, doc.doc_id).write_text(doc.text, encoding="utf-8", newline="")
        pieces[CHUNKS] += chunks
        pieces[SENTENCES] += sentences
        documents[doc.doc_id] = DocumentEntry(sha256=doc.sha256, chunks=len(chunks), sentences=len(sentences),
                                              path=doc.path)
        progress("Splitting documents", n, len(todo))
    embedded: dict[str, list[float]] = {}  # a one-sentence chunk is that sentence: embedded once
    for kind in (SENTENCES, CHUNKS):
        _add(collections[kind], kind, pieces[kind], embedder, settings.embed_batch_size, progress, embedded)
    manifest = Manifest(shape=shape, collections=names, documents=documents, dimension=embedder.dimension)
    _write_bm25(path, stored_chunks(path, documents, settings), progress)
    write_manifest(path, manifest)
    return Generation(path, manifest)


def _carry_over(settings: Settings, old: Generation, path: Path, collections: dict[str, Any],
                doc_ids: list[str]) -> None:
    """Copy the kept documents' text and vectors from `old`: nothing is embedded again."""
    if not doc_ids or old.manifest is None:
        return
    for doc_id in doc_ids:
        shutil.copyfile(doc_path(old.path, doc_id), doc_path(path, doc_id))
    try:
        client = chroma_client(settings, old.path)
        for kind, target in collections.items():
            source = client.get_collection(old.manifest.collections[kind])
            for offset in range(0, source.count(), _COPY_BATCH):
                got = source.get(where={DOC_KEY: {"$in": doc_ids}}, include=["embeddings", "metadatas", "documents"],
                                 limit=_COPY_BATCH, offset=offset)
                if got["ids"]:
                    target.add(ids=got["ids"], embeddings=got["embeddings"], metadatas=got["metadatas"],
                               documents=got["documents"])
    except Exception as e:  # chromadb raises many types on damaged files
        raise damaged(settings.index_dir, e) from None


def _last_of_each(docs: list[Document]) -> list[Document]:
    return list({d.doc_id: d for d in docs}.values())


def _add(collection: Any, kind: str, pieces: list[Span], embedder: Embedder, batch: int,
         progress: Progress, embedded: dict[str, list[float]]) -> None:
    """Embed and store every piece, all documents together (a batch per file would cost a model
    call and a Chroma write each, which dominate for many small files); texts in `embedded` are
    not embedded again, and new ones are added to it."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    store = ChromaVectorStore(chroma_collection=collection)
    stage = f"Embedding {kind}"
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


def _stored_documents(live: Generation, fresh: list[Document]) -> list[Document]:
    """Documents already indexed that are not being replaced, reread from the index's copies."""
    replaced = {d.doc_id for d in fresh}
    docs = []
    for doc_id in stored_ids(live.path):
        if doc_id not in replaced:
            text = read_text(doc_path(live.path, doc_id))
            entry = live.documents.get(doc_id)
            docs.append(Document(doc_id, text, hashlib.sha256(text.encode()).hexdigest(), entry.path if entry else ""))
    return docs
