"""The embedding model runs on its ONNX export: the same vectors as sentence-transformers, made
once, remade when the weights change, and never for a model whose pooling it does not reproduce."""

import json
import shutil

import numpy as np
import pytest

from assistant.embedding import Embedder
from assistant.settings import DEFAULT_CORPUS, packaged_embedding_path
from assistant.embedding_export import EXPORT_DIR, exported

TEXTS = [*DEFAULT_CORPUS.read_text(encoding="utf-8").split("\n")[:40], "Who is Putin's spokesperson?",
         "Un café crème à Zürich.", "東京は日本の首都です。", "word " * 500]


def model_copy(tmp_path, **changed: object):
    """The packaged model's files linked into a folder of its own; `changed` files written anew."""
    folder = tmp_path / "minilm"
    shutil.copytree(packaged_embedding_path(), folder, copy_function=lambda src, dst: shutil.os.symlink(src, dst))
    for name, content in changed.items():
        (folder / name).unlink()
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


@pytest.mark.slow
def test_the_export_gives_sentence_transformers_vectors():
    from sentence_transformers import SentenceTransformer

    texts = [t for t in TEXTS if t.strip()]
    embedder = Embedder(packaged_embedding_path())
    assert type(embedder.llama).__name__ == "OnnxEmbedding"
    want = SentenceTransformer(str(packaged_embedding_path()), device="cpu").encode(texts, normalize_embeddings=True)
    got = embedder.embed_texts(texts)
    assert got.shape == want.shape == (len(texts), embedder.dimension)
    assert float((want * got).sum(1).min()) >= 0.9999
    query = embedder.embed_query(texts[0])
    assert float(query @ want[0]) >= 0.9999 and abs(float(np.linalg.norm(query)) - 1) < 1e-5


def test_the_export_is_kept_in_the_environment_with_its_card():
    made = exported(packaged_embedding_path())
    assert made is not None and made.parent == EXPORT_DIR
    card = json.loads(made.with_suffix(".json").read_text(encoding="utf-8"))
    assert card["onnx_bytes"] == made.stat().st_size and card["min_cosine"] >= 0.9999
    assert card["weights"] == "model.safetensors" and len(card["weights_sha256"]) == 64


@pytest.mark.slow
def test_changed_weights_are_exported_again(tmp_path):
    model = model_copy(tmp_path)
    first = exported(model, tmp_path / "exports")
    assert first is not None and first.parent == tmp_path / "exports"
    assert exported(model, tmp_path / "exports") == first  # kept: nothing is made twice
    (model / "model.safetensors").unlink()
    shutil.copy(packaged_embedding_path() / "model.safetensors", model / "model.safetensors")  # a new stamp
    again = exported(model, tmp_path / "exports")
    assert again is not None and again != first and again.is_file()


def test_a_model_pooled_otherwise_stays_on_torch(tmp_path):
    pooling = json.loads((packaged_embedding_path() / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    model = model_copy(tmp_path)
    (model / "1_Pooling").unlink() if (model / "1_Pooling").is_symlink() else shutil.rmtree(model / "1_Pooling")
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}), encoding="utf-8")
    assert exported(model, tmp_path / "exports") is None
    assert not (tmp_path / "exports").exists()


def test_a_read_only_environment_stays_on_torch(tmp_path):
    (tmp_path / "exports").write_text("a file where the folder would be", encoding="utf-8")
    assert exported(model_copy(tmp_path), tmp_path / "exports") is None
