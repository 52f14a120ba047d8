"""Build and open the on-disk index: Chroma vectors for chunks and sentences, BM25 beside them.

Does not retrieve. Layout under settings.index_dir:
  manifest.json  settings fingerprint and, per document, its content hash
  docs/          the exact text every citation offset refers to
  chroma/        persistent Chroma: collection `chunks` and collection `sentences`
  bm25/          llama-index BM25 retriever over the chunks
"""

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.chunking import Chunk, Span, chunk_sentences, split_sentences
from assistant.embedding import Embedder
from assistant.errors import AssistantError
from assistant.loading import Document
from assistant.settings import Settings

Progress = Callable[[str, int, int], None]  # (stage, done, total)
CHUNKS, SENTENCES = "chunks", "sentences"


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
    vector_store: Any  # llama-index ChromaVectorStore over `chunks`
    bm25_dir: Path


def _noop(stage: str, done: int, total: int) -> None:
    return None


def index_documents(
    docs: list[Document], settings: Settings, progress: Progress = _noop, rebuild: bool = False
) -> IndexReport:
    """Add or update `docs`; a document whose content hash is already indexed costs nothing.
    Built with other settings (or `rebuild`), the index is rebuilt, keeping its documents."""
    began = time.perf_counter()
    root = settings.index_dir
    manifest = _read_manifest(root) if (root / "manifest.json").exists() and not rebuild else None
    if rebuild or (manifest is not None and manifest["fingerprint"] != settings.index_fingerprint()):
        docs = _stored_documents(root, docs) + docs
        manifest = None
    if manifest is None:
        _reset(root)
        manifest = {"fingerprint": settings.index_fingerprint(), "documents": {}}
    known = manifest["documents"]
    todo = [d for d in _last_of_each(docs) if known.get(d.doc_id, {}).get("sha256") != d.sha256]
    unchanged = tuple(d.doc_id for d in docs if d not in todo)
    if todo:
        embedder = Embedder(settings.embedding_path(), settings.embed_batch_size)
        client = chroma_client(root)
        for doc in todo:
            known[doc.doc_id] = _index_one(doc, client, settings, embedder, progress)
        _write_bm25(root, _all_chunks(root, known, settings), progress)
        _write_json(root / "manifest.json", manifest)
    return IndexReport(
        indexed=tuple(d.doc_id for d in todo),
        unchanged=unchanged,
        chunks=sum(v["chunks"] for v in known.values()),
        sentences=sum(v["sentences"] for v in known.values()),
        seconds=time.perf_counter() - began,
    )


def _last_of_each(docs: list[Document]) -> list[Document]:
    return list({d.doc_id: d for d in docs}.values())


def _index_one(doc: Document, client: Any, settings: Settings, embedder: Embedder, progress: Progress) -> dict:
    sentences = split_sentences(doc.text)
    chunks = chunk_sentences(doc.text, doc.doc_id, sentences, settings.chunk_tokens, settings.chunk_overlap)
    _doc_path(settings.index_dir, doc.doc_id).parent.mkdir(parents=True, exist_ok=True)
    _doc_path(settings.index_dir, doc.doc_id).write_text(doc.text, encoding="utf-8", newline="")
    for name, pieces in ((CHUNKS, chunks), (SENTENCES, sentences)):
        collection = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"})
        collection.delete(where={"source": doc.doc_id})
        _add(collection, doc.doc_id, name, pieces, embedder, settings.embed_batch_size, progress)
    return {"sha256": doc.sha256, "chunks": len(chunks), "sentences": len(sentences)}


def _add(
    collection: Any, doc_id: str, kind: str, pieces: list, embedder: Embedder, batch: int, progress: Progress
) -> None:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    store = ChromaVectorStore(chroma_collection=collection)
    stage = f"Embedding {kind} of {doc_id}"
    # A batch is padded to its longest text: batches of similar lengths cost ~15% less CPU.
    pieces = sorted(pieces, key=lambda p: len(p.text))
    progress(stage, 0, len(pieces))
    for i in range(0, len(pieces), batch):
        nodes = [piece_node(doc_id, p) for p in pieces[i : i + batch]]
        for node, vector in zip(nodes, embedder.embed_texts([n.text for n in nodes])):
            node.embedding = vector.tolist()
        store.add(nodes)
        progress(stage, i + len(nodes), len(pieces))


def _all_chunks(root: Path, known: dict, settings: Settings) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc_id in sorted(known):
        text = _read_text(_doc_path(root, doc_id))
        chunks += chunk_sentences(text, doc_id, split_sentences(text), settings.chunk_tokens, settings.chunk_overlap)
    return chunks


def _write_bm25(root: Path, chunks: list[Chunk], progress: Progress) -> None:
    from llama_index.retrievers.bm25 import BM25Retriever

    progress("Building BM25", 0, 1)
    retriever = BM25Retriever.from_defaults(nodes=[piece_node(c.doc_id, c) for c in chunks], similarity_top_k=len(chunks))
    tmp = root / "bm25.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.persist(str(tmp))
    shutil.rmtree(root / "bm25", ignore_errors=True)
    tmp.rename(root / "bm25")
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


def chroma_client(root: Path) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    return chromadb.PersistentClient(
        path=str(root / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )


def open_index(settings: Settings) -> OpenIndex:
    """Load an index for answering; says how to fix a missing, stale or damaged one."""
    root = settings.index_dir
    if not (root / "manifest.json").exists():
        raise AssistantError(f"no index at {root}; run 'assistant index' first")
    manifest = _read_manifest(root)
    if manifest["fingerprint"] != settings.index_fingerprint():
        raise AssistantError(f"the index at {root} was built with other settings; run 'assistant index' to rebuild it")
    try:
        return _load(root, manifest, settings)
    except AssistantError:
        raise
    except Exception as e:  # chromadb and bm25s raise many types on damaged files
        raise AssistantError(f"the index at {root} is damaged ({type(e).__name__}); run 'assistant index --rebuild'") from None


def _load(root: Path, manifest: dict, settings: Settings) -> OpenIndex:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    documents = {d: _read_text(_doc_path(root, d)) for d in manifest["documents"]}
    client = chroma_client(root)
    got = client.get_collection(SENTENCES).get(include=["embeddings", "metadatas", "documents"])
    order = sorted(range(len(got["ids"])), key=lambda i: (got["metadatas"][i]["source"], got["metadatas"][i]["start"]))
    sentences = [_sentence(got["metadatas"][i], got["documents"][i]) for i in order]
    for s in sentences:
        if documents[s.doc_id][s.start : s.end] != s.text:
            raise AssistantError(f"the index at {root} does not match its documents; run 'assistant index --rebuild'")
    vectors = np.asarray(got["embeddings"], dtype=np.float32)[order] if order else np.zeros((0, 1), np.float32)
    return OpenIndex(
        documents=documents,
        chunks=_all_chunks(root, manifest["documents"], settings),
        sentences=sentences,
        sentence_vectors=vectors,
        vector_store=ChromaVectorStore(chroma_collection=client.get_collection(CHUNKS)),
        bm25_dir=root / "bm25",
    )


def _sentence(meta: dict, text: str) -> Sentence:
    return Sentence(str(meta["source"]), int(meta["start"]), int(meta["end"]), text)


def _read_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("documents"), dict):
            raise ValueError("no document list")
        if not isinstance(manifest.get("fingerprint"), str):
            raise ValueError("no settings fingerprint")
        return manifest
    except (OSError, ValueError) as e:
        raise AssistantError(f"the index at {root} is damaged ({e}); run 'assistant index --rebuild'") from None


def _read_text(path: Path) -> str:
    """Byte-exact: read_text() would turn CRLF into LF and shift every offset after it."""
    return path.read_bytes().decode("utf-8")


def _doc_path(root: Path, doc_id: str) -> Path:
    return root / "docs" / f"{doc_id}.txt"


def _stored_documents(root: Path, fresh: list[Document]) -> list[Document]:
    """Documents already indexed that are not being replaced, reread from the index's copies."""
    replaced = {d.doc_id for d in fresh}
    stored = sorted((root / "docs").glob("*.txt")) if (root / "docs").is_dir() else []
    docs = []
    for path in stored:
        doc_id, text = path.name[: -len(".txt")], _read_text(path)
        if doc_id not in replaced:
            docs.append(Document(doc_id, text, hashlib.sha256(text.encode()).hexdigest()))
    return docs


def _reset(root: Path) -> None:
    from chromadb.api.client import SharedSystemClient

    # Chroma keeps one client per path for the whole process; a deleted folder needs a new one.
    SharedSystemClient.clear_system_cache()
    for name in ("chroma", "bm25", "docs", "manifest.json"):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)
