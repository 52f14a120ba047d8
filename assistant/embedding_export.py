"""The embedding model as ONNX: exported once from torch, kept only when it gives the same vectors.

The export lives in <sys.prefix>/share/assistant (the virtual environment `make install` made),
named by the model's identity, with a card beside it: the weights' size, time and SHA-256, the
export's SHA-256, and the smallest cosine against torch on probe texts. It is used only while the
weights are the ones its card names. A model whose pooling the export does not reproduce (anything
but mean pooling and unit length), or a read-only environment, keeps running on torch.

`python -m assistant.embedding_export` makes it (make install runs it).
"""

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from assistant.embedding import cannot_load, embedding_identity, read_json
from assistant.errors import AssistantError

EXPORT_DIR = Path(sys.prefix) / "share" / "assistant"
MIN_COSINE = 0.9999
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Short and long (past the 256-token cut), accents, CJK, emoji, digits: what documents hold.
PROBES = ("Who is Putin's spokesperson?", "Un café crème, s'il vous plaît.", "東京は日本の首都です。",
          "The harbour opened in 1852 😀 and closed in 1901.", "word " * 400, "a")


def exported(model: Path, folder: Path = EXPORT_DIR) -> Path | None:
    """The ONNX export of `model`, made now when missing; None when it cannot be (torch runs then)."""
    weights = _weights(model)
    if weights is None:
        return None
    # Named by the weights' place and stamp too: two copies of one model do not take turns.
    where = hashlib.sha256(json.dumps([str(weights.resolve()), _stamp(weights)]).encode()).hexdigest()[:8]
    target = folder / f"{embedding_identity(model)}-{where}.onnx"
    if _current(target, model):
        return target
    if not _mean_pooled(model):
        return None
    try:
        return export(model, target)
    except OSError:  # a read-only environment
        return None


def _weights(model: Path) -> Path | None:
    return next((model / name for name in WEIGHTS if (model / name).is_file()), None)


def _stamp(weights: Path) -> list[int]:
    info = weights.stat()
    return [info.st_size, info.st_mtime_ns]


def _current(target: Path, model: Path) -> bool:
    """The export is there, whole, and made from these weights (by size and time: hashing 90 MB
    at every start would cost more than the export saves)."""
    weights = _weights(model)
    if weights is None or not target.is_file() or not target.with_suffix(".json").is_file():
        return False
    try:
        card = read_json(target.with_suffix(".json"), "the embedding export's card ")
    except (AssistantError, ValueError):
        return False
    return card.get("weights_stamp") == _stamp(weights) and card.get("onnx_bytes") == target.stat().st_size


def _mean_pooled(model: Path) -> bool:
    """Transformer, mean pooling, unit length: the three modules the export reproduces."""
    try:
        modules = [m["type"].rsplit(".", 1)[-1] for m in read_json(model / "modules.json", "the modules file ")]
        pooling = read_json(model / "1_Pooling" / "config.json", "the pooling config ")
    except (AssistantError, ValueError, KeyError, TypeError):
        return False
    means = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    return (modules == ["Transformer", "Pooling", "Normalize"] and means == ["pooling_mode_mean_tokens"]
            and all((model / name).is_file() for name in ("tokenizer.json", "sentence_bert_config.json"))
            and _weights(model) is not None)


def export(model: Path, target: Path) -> Path | None:
    """Export `model` to `target` and check it against torch; the card goes beside it. None when
    the export gives other vectors."""
    target.parent.mkdir(parents=True, exist_ok=True)  # first: a read-only place fails before torch loads
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    began = time.perf_counter()
    try:
        inner = AutoModel.from_pretrained(str(model), attn_implementation="eager").eval()
    except Exception as e:  # transformers, safetensors and torch each raise their own types on a bad file
        raise cannot_load(model, e) from None
    pooled = _Pooled(inner)
    max_tokens = int(read_json(model / "sentence_bert_config.json", "the model's config ").get("max_seq_length", 256))
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding()
    fd, scratch = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        _to_onnx(pooled, Path(scratch))
        cosine = _agreement(pooled, Path(scratch), tokenizer)
        if cosine < MIN_COSINE:
            return None
        card = {"model": embedding_identity(model), "weights": _weights(model).name,  # type: ignore[union-attr]
                "weights_stamp": _stamp(_weights(model)),  # type: ignore[arg-type]
                "weights_sha256": _sha256(_weights(model)),  # type: ignore[arg-type]
                "onnx_sha256": _sha256(Path(scratch)), "onnx_bytes": Path(scratch).stat().st_size,
                "dimension": int(inner.config.hidden_size), "max_tokens": max_tokens, "min_cosine": cosine,
                "probes": len(PROBES), "torch": torch.__version__, "seconds": round(time.perf_counter() - began, 1)}
        os.replace(scratch, target)
        target.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    finally:
        Path(scratch).unlink(missing_ok=True)
    return target


class _Pooled:
    """The transformer with sentence-transformers' mean pooling and normalisation after it."""

    def __new__(cls, inner: Any) -> Any:
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2, dim=1)

        # eval(): a new module is in training mode, and the exporter restores that mode to every
        # child after tracing, which would turn dropout on in the torch reference.
        return Pooled().eval()


def _to_onnx(pooled: Any, path: Path) -> None:
    import torch

    example = torch.ones((2, 16), dtype=torch.long)
    dims = {0: "batch", 1: "tokens"}
    # The tracer's shape notes and the legacy exporter's deprecation: the other exporter needs onnxscript.
    warnings.filterwarnings("ignore", module=r"(torch|transformers)\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(pooled, (example, example, torch.zeros_like(example)), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["embedding"],
                      opset_version=17, dynamic_axes={"input_ids": dims, "attention_mask": dims,
                                                      "token_type_ids": dims, "embedding": {0: "batch"}})


def _agreement(pooled: Any, path: Path, tokenizer: Any) -> float:
    """The smallest cosine between torch's and the export's vectors of the probe texts, in one padded batch."""
    import onnxruntime
    import torch

    encoded = tokenizer.encode_batch(list(PROBES))
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    with torch.no_grad():
        want = pooled(torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros_like(torch.from_numpy(ids))).numpy()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return float((want * got[0]).sum(1).min())


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


if __name__ == "__main__":
    import assistant  # noqa: F401  (the offline variables, before torch loads)
    from assistant.settings import Settings

    made = exported(Settings().embedding_path())
    print(f"embedding model as ONNX: {made}" if made else "embedding model stays on torch (no ONNX export)")
