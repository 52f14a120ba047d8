"""The on-disk index: incremental updates, stale or damaged indexes, exact offsets in Chroma."""

import json
import shutil

import numpy as np
import pytest

from assistant.chunking import chunk_sentences, split_sentences
from assistant.embedding import Embedder
from assistant.evidence import SentenceRanker
from assistant.retrieval import Passage
from assistant.errors import AssistantError
from assistant.indexing import index_documents
from assistant.store import index_shape, open_index
from assistant.loading import load_document
from assistant.settings import DEFAULT_CORPUS, Settings

PETS = "Cats sleep sixteen hours a day. Dogs bark at the mail carrier. Birds sing at dawn."
OWLS = "# Owls\n\nOwls hunt at night. They fly without a sound."


@pytest.fixture
def index_copy(tmp_path, index_dir):
    """A copy of the session index at a path this process has never opened."""
    return shutil.copytree(index_dir, tmp_path / "index")


@pytest.fixture
def small(tmp_path):
    """Two small documents indexed into their own folder; returns (settings, {name: path})."""
    paths = {"pets.txt": tmp_path / "pets.txt", "owls.md": tmp_path / "owls.md"}
    paths["pets.txt"].write_text(PETS, encoding="utf-8")
    paths["owls.md"].write_text(OWLS, encoding="utf-8")
    settings = Settings(index_dir=tmp_path / "small")
    report = index_documents([load_document(p, 10) for p in paths.values()], settings)
    assert report.indexed == ("pets.txt", "owls.md") and report.unchanged == ()
    return settings, paths


def live(index_dir):
    """The generation folder CURRENT points at."""
    return index_dir / (index_dir / "CURRENT").read_text().strip()


def error_of(settings) -> str:
    with pytest.raises(AssistantError) as info:
        open_index(settings)
    assert info.value.exit_code == 1
    return str(info.value)


def test_session_index_layout(session_index, article):
    index_dir, report = session_index
    assert report.indexed == ("article.txt",) and report.unchanged == ()
    sentences = split_sentences("a", article)
    assert report.sentences == len(sentences)
    assert report.chunks == len(chunk_sentences(article, sentences, 200, 40))
    generation = live(index_dir)
    assert sorted(p.name for p in index_dir.iterdir()) == ["CURRENT", generation.name, "lock"]
    manifest = json.loads((generation / "manifest.json").read_text())
    assert manifest["shape"] == index_shape(Settings(index_dir=index_dir)).model_dump()
    assert manifest["dimension"] == 384
    assert manifest["documents"]["article.txt"]["chunks"] == report.chunks
    suffix = generation.name.removeprefix("gen-")
    assert manifest["collections"] == {"chunks": f"chunks-{suffix}"}  # sentences are embedded when asked about
    for name in ("chroma", "bm25", "docs"):
        assert (generation / name).is_dir()


def test_reindexing_the_same_document_does_no_work(session_index):
    index_dir, first = session_index
    generation = live(index_dir)
    manifest = generation / "manifest.json"
    before = manifest.stat().st_mtime_ns
    report = index_documents([load_document(DEFAULT_CORPUS, 10)], Settings(index_dir=index_dir))
    assert report.indexed == ()
    assert report.unchanged == ("article.txt",)
    assert (report.chunks, report.sentences) == (first.chunks, first.sentences)
    assert report.seconds < 1.0  # no model loaded, nothing embedded
    assert live(index_dir) == generation and manifest.stat().st_mtime_ns == before


def test_changing_a_document_reindexes_only_it(small):
    settings, paths = small
    before = live(settings.index_dir)
    paths["pets.txt"].write_text("Fish swim in the sea. Cats sleep sixteen hours a day.", encoding="utf-8")
    report = index_documents([load_document(p, 10) for p in paths.values()], settings)
    assert report.indexed == ("pets.txt",)
    assert report.unchanged == ("owls.md",)
    index = open_index(settings)
    assert index.documents == {"pets.txt": "Fish swim in the sea. Cats sleep sixteen hours a day.", "owls.md": OWLS}
    # The old sentences are gone from Chroma, the new ones are there, each at its exact offsets.
    assert [s.text for s in index.sentences if s.doc_id == "pets.txt"] == [
        "Fish swim in the sea.",
        "Cats sleep sixteen hours a day.",
    ]
    assert len(index.sentences) == report.sentences == 5
    assert len(index.vector_store._collection.get()["ids"]) == report.chunks == len(index.chunks)
    # The change went into a new generation; the old one and its collections are gone.
    assert live(settings.index_dir) != before and not before.exists()
    assert sorted(p.name for p in settings.index_dir.glob("gen-*")) == [live(settings.index_dir).name]


def test_adding_a_document_carries_the_others_over_without_embedding_them(small, tmp_path, monkeypatch):
    """The unchanged documents' vectors are copied into the new generation, not computed again."""
    settings, paths = small
    before = open_index(settings)
    extra = tmp_path / "fish.txt"
    extra.write_text("Fish swim in the sea.", encoding="utf-8")
    embedded: list[str] = []
    real = Embedder.embed_texts
    monkeypatch.setattr(Embedder, "embed_texts", lambda self, texts: embedded.extend(texts) or real(self, texts))
    report = index_documents([load_document(extra, 10)], settings)
    assert report.indexed == ("fish.txt",)
    assert embedded and all("Fish" in text for text in embedded)
    after = open_index(settings)
    assert set(after.documents) == {"pets.txt", "owls.md", "fish.txt"}
    assert [s for s in after.sentences if s.doc_id != "fish.txt"] == before.sentences
    rows = {key: before.vector_store._collection.get(include=["embeddings"])[key] for key in ("ids", "embeddings")}
    old = dict(zip(rows["ids"], rows["embeddings"]))
    now = after.vector_store._collection.get(ids=list(old), include=["embeddings"])
    for key, vector in zip(now["ids"], now["embeddings"]):  # Chroma's cosine space normalises: equal to a few ulps
        assert np.allclose(vector, old[key], atol=1e-6)
    assert len(after.vector_store._collection.get()["ids"]) == report.chunks == len(after.chunks)


def test_open_index_on_a_missing_folder(tmp_path):
    message = error_of(Settings(index_dir=tmp_path / "nowhere"))
    assert "no index" in message and "assistant index" in message


def test_open_index_on_an_empty_folder(tmp_path):
    assert "assistant index" in error_of(Settings(index_dir=tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        '{"fingerprint": "abc"}',
        '{"fingerprint": "abc", "documents": []}',
        "[]",
        '{"documents": {}}',
        '{"documents": {}, "collections": {}}',
    ],
    ids=["not-json", "empty", "no-documents", "documents-list", "json-list", "no-collections", "no-settings"],
)
def test_corrupt_manifest(index_copy, content):
    (live(index_copy) / "manifest.json").write_text(content)
    message = error_of(Settings(index_dir=index_copy))
    assert "damaged" in message and "assistant index --rebuild" in message


def test_index_built_with_other_settings(index_dir):
    for other in (Settings(index_dir=index_dir, chunk_tokens=120), Settings(index_dir=index_dir, chunk_overlap=0)):
        message = error_of(other)
        assert "built with other settings" in message and "assistant index --rebuild" in message


def test_settings_that_do_not_shape_the_index_open_it(index_dir):
    index = open_index(Settings(index_dir=index_dir, top_k=2, abstain_gate=False, retrieval="bm25"))
    assert "article.txt" in index.documents


@pytest.mark.slow
def test_rebuild_with_other_settings_keeps_the_documents(index_copy, article):
    other = Settings(index_dir=index_copy, chunk_tokens=100, chunk_overlap=20)
    report = index_documents([], other)
    assert report.indexed == ("article.txt",)
    index = open_index(other)
    assert index.documents == {"article.txt": article}
    chunks = chunk_sentences(article, split_sentences("a", article), 100, 20)
    assert len(index.chunks) == report.chunks == len(chunks)
    assert "other settings" in error_of(Settings(index_dir=index_copy))


def test_rebuild_in_the_same_process(small):
    settings, paths = small
    open_index(settings)
    report = index_documents([], settings, rebuild=True)
    assert set(report.indexed) == set(paths)
    assert len(open_index(settings).sentences) == report.sentences


def test_tampered_document_copy_is_detected(index_copy):
    copy = live(index_copy) / "docs" / "article.txt.txt"
    copy.write_text("X" + copy.read_text(encoding="utf-8"), encoding="utf-8")
    message = error_of(Settings(index_dir=index_copy))
    assert "does not match" in message and "--rebuild" in message


def test_a_copy_grown_past_its_last_sentence_is_found_by_its_size(index_copy):
    """No sentence changed, so only the size the manifest records tells `ask`; `index` hashes."""
    copy = live(index_copy) / "docs" / "article.txt.txt"
    copy.write_bytes(copy.read_bytes() + b"\n\n")
    assert "does not match" in error_of(Settings(index_dir=index_copy))
    with pytest.raises(AssistantError, match=r"is damaged \(the copy of article.txt was changed\)"):
        index_documents([], Settings(index_dir=index_copy))


def test_missing_document_copy_is_reported_as_damaged(index_copy):
    (live(index_copy) / "docs" / "article.txt.txt").unlink()
    message = error_of(Settings(index_dir=index_copy))
    assert "damaged" in message and "--rebuild" in message


def test_sentences_are_cut_again_from_the_copies(settings, article):
    index = open_index(settings)
    assert index.documents == {"article.txt": article}
    assert [(s.start, s.end, s.text) for s in index.sentences] == [
        (s.start, s.end, s.text) for s in split_sentences("a", article)
    ]
    for s in index.sentences:
        assert index.documents[s.doc_id][s.start : s.end] == s.text


def test_sentence_vectors_are_made_once_and_only_for_the_passages_a_question_needs(settings, ungated):
    index = open_index(settings)
    embedded: list[str] = []
    ranker = SentenceRanker(index, lambda texts: embedded.extend(texts) or ungated.embedder.embed_texts(texts))
    passage = index.chunks[3]
    question = "Who met in Istanbul?"
    query = ungated.embedder.embed_query(question)
    ranked = ranker.rank(question, query, [Passage(passage.doc_id, passage.start, passage.end, passage.text, 1.0)])
    inside = [s.text for s in index.sentences if s.inside(passage)]
    assert sorted(embedded) == sorted(inside) and sorted(e.text for e in ranked) == sorted(inside)
    want = ungated.embedder.embed_texts(inside)  # the same vectors, cosine is a dot product of unit vectors
    assert np.allclose(sorted(e.cosine for e in ranked), sorted(want @ query), atol=1e-5)
    ranker.rank(question, query, [Passage(passage.doc_id, passage.start, passage.end, passage.text, 1.0)])
    assert len(embedded) == len(inside)  # remembered: not embedded again


def test_chunk_offsets_round_trip_through_chroma(settings):
    index = open_index(settings)
    got = index.vector_store._collection.get(include=["metadatas", "documents"])
    assert len(got["ids"]) == len(index.chunks)
    stored = sorted((m["source"], m["start"], m["end"], text) for m, text in zip(got["metadatas"], got["documents"]))
    assert stored == sorted((c.doc_id, c.start, c.end, c.text) for c in index.chunks)
    for doc, start, end, text in stored:
        assert index.documents[doc][start:end] == text


def test_crlf_document_text_is_kept_byte_for_byte(tmp_path):
    """load_document keeps \\r\\n; the offsets the index stores refer to that exact text."""
    path = tmp_path / "windows.txt"
    path.write_bytes(b"Cats sleep sixteen hours a day.\r\n\r\nDogs bark at night. Birds sing.\r\n")
    doc = load_document(path, 10)
    assert "\r\n" in doc.text
    for s in split_sentences("a", doc.text):
        assert doc.text[s.start : s.end] == s.text


def test_crlf_document_can_be_indexed_and_opened(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"Cats sleep sixteen hours a day.\r\n\r\nDogs bark at night. Birds sing.\r\n")
    settings = Settings(index_dir=tmp_path / "index")
    index_documents([load_document(path, 10)], settings)
    index = open_index(settings)
    assert index.documents["windows.txt"] == load_document(path, 10).text
