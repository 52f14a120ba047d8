"""Sentence-transformers embeddings (all-MiniLM-L6-v2 by default), through llama-index.

Does not download: the model is a folder on disk, and a missing folder is an error.
"""

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from assistant.errors import AssistantError


class Embedder:
    """Unit-length vectors for texts and queries; `llama` is the llama-index face of the same model."""

    def __init__(self, path: Path, batch_size: int = 32) -> None:
        if not (path / "config.json").is_file():
            raise AssistantError(f"no embedding model at {path}; run 'make install' or pass --embedding-model")
        _check_temporary_folder()
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        # Eager attention: on these CPUs the default SDPA path is far slower for one short query.
        try:
            self.llama = HuggingFaceEmbedding(
                model_name=str(path),
                device="cpu",
                embed_batch_size=batch_size,
                model_kwargs={"attn_implementation": "eager"},
            )
        except Exception as e:  # transformers, safetensors and torch each raise their own types on a bad file
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise AssistantError(f"cannot load the embedding model at {path} ({reason}); run 'make install'") from None
        self.name = path.name

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self.llama.get_text_embedding_batch(texts), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self.llama.get_query_embedding(text), dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self.llama._model.get_embedding_dimension() or 0)


def _check_temporary_folder() -> None:
    """torch will not import without a writable temporary folder: one line instead of its traceback."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError as e:  # tempfile's word for "none of them is writable"
        raise AssistantError(f"no writable temporary folder ({e.strerror}); set TMPDIR to a writable folder") from None


def embedding_identity(path: Path) -> str:
    """'model@1a2b3c4d': the folder's name and a hash of the configs that fix what it computes
    (architecture, pooling, any projection layer), read without loading the model."""
    digest = hashlib.sha256()
    for config in [path / "config.json", path / "modules.json", *sorted(path.glob("*/config.json"))]:
        if config.is_file():
            digest.update(str(config.relative_to(path)).encode() + config.read_bytes())
    return f"{path.name}@{digest.hexdigest()[:8]}"
