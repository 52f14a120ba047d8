"""all-MiniLM-L6-v2 embeddings (or another sentence-transformers folder), through llama-index.

Vectors come from onnxruntime, through an ONNX export of the same model (made once by
embedding_export.py, at install or on first use; about twice as fast as torch, and no torch
import). A model the export cannot reproduce runs on sentence-transformers instead. Does not
download: the model is a folder on disk, and a missing folder is an error.
"""

import hashlib
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import AssistantError
from assistant.loading import read_bounded

MAX_CONFIG_BYTES = 10_000_000


class Embedder:
    """Unit-length vectors for texts and queries; `llama` is the llama-index face of the same model."""

    def __init__(self, path: Path, batch_size: int = 32) -> None:
        if not (path / "config.json").is_file():
            raise AssistantError(f"no embedding model at {path}; run 'make install' or pass --embedding-model")
        from assistant.embedding_export import exported

        self.name = path.name
        onnx = exported(path)
        self.llama = _onnx_embedding(onnx, path, batch_size) if onnx else _torch_embedding(path, batch_size)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self.llama.get_text_embedding_batch(texts), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self.llama.get_query_embedding(text), dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self.llama.dimension)


@lru_cache(maxsize=2)
def shared_embedder(path: Path, batch_size: int) -> Embedder:
    """One Embedder per model for the whole process: the UI indexes each upload with the model its
    answers already loaded, instead of loading 90 MB again (and leaving the allocator the old one)."""
    return Embedder(path, batch_size)


def _torch_embedding(path: Path, batch_size: int) -> Any:
    _check_temporary_folder()
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    # Eager attention: on these CPUs the default SDPA path is far slower for one short query.
    try:
        model = HuggingFaceEmbedding(
            model_name=str(path),
            cache_folder=str(path),  # the model is local: nothing is cached, and HOME need not be writable
            device="cpu",
            embed_batch_size=batch_size,
            model_kwargs={"attn_implementation": "eager"},
        )
    except Exception as e:  # transformers, safetensors and torch each raise their own types on a bad file
        raise cannot_load(path, e) from None
    object.__setattr__(model, "dimension", model._model.get_embedding_dimension() or 0)
    return model


def _check_temporary_folder() -> None:
    """torch will not import without a writable temporary folder: one line instead of its traceback."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError as e:  # tempfile's word for "none of them is writable"
        raise AssistantError(f"no writable temporary folder ({e.strerror}); set TMPDIR to a writable folder") from None


def cannot_load(path: Path, e: Exception) -> AssistantError:
    reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return AssistantError(f"cannot load the embedding model at {path} ({reason}); run 'make install'")


def _onnx_embedding(onnx: Path, path: Path, batch_size: int) -> Any:
    """A llama-index embedding model over the ONNX export: mean-pooled, unit-length vectors as
    sentence-transformers gives them (the export checked that before it was kept)."""
    import onnxruntime
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from tokenizers import Tokenizer

    card = read_json(onnx.with_suffix(".json"), "the embedding export's card ")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_truncation(card["max_tokens"])
    tokenizer.enable_padding()
    onnxruntime.disable_telemetry_events()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    def vectors(texts: list[str]) -> list[list[float]]:
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return session.run(["embedding"], feed)[0].tolist()

    class OnnxEmbedding(BaseEmbedding):
        dimension: int = card["dimension"]

        def _get_query_embedding(self, query: str) -> list[float]:
            return vectors([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return vectors([query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return vectors([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return vectors(texts)

    return OnnxEmbedding(model_name=path.name, embed_batch_size=batch_size)


def read_json(path: Path, what: str) -> Any:
    """A small JSON file of the model's folder or its export, read through the bounded reader."""
    return json.loads(read_bounded(path, MAX_CONFIG_BYTES, what))


def embedding_identity(path: Path) -> str:
    """'model@1a2b3c4d': the folder's name and a hash of the configs that fix what it computes
    (architecture, pooling, any projection layer), read without loading the model."""
    digest = hashlib.sha256()
    for config in [path / "config.json", path / "modules.json", *sorted(path.glob("*/config.json"))]:
        if config.is_file():
            named = str(config.relative_to(path)).encode()
            digest.update(named + read_bounded(config, MAX_CONFIG_BYTES, "the config "))
    return f"{path.name}@{digest.hexdigest()[:8]}"
