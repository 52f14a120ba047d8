"""The fitted start and span rankers and abstention gates of one model and prompt set, with what they were fitted on.

The weights are properties of the model that scored the spans and of the prompts it was asked
with: the same span ranker rewards a contrast with a content-free question for one model and is
hurt by it for another. So the file records the model file's SHA-256 and the prompts' digest, and
loading it with anything else is an error that names the fix. Fitting is `tools/fitting.py`; this
module only reads, checks and applies (numpy, no scikit-learn at answer time).
"""

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from assistant.errors import AssistantError

FORMAT = 1
Read = TypeVar("Read", bound=BaseModel)
FITTED_DIR = Path(__file__).resolve().parent / "fitted"


class Linear(BaseModel):
    """A logistic model on standardised features: logit = w . (x - mean) / scale + bias."""

    model_config = ConfigDict(frozen=True)

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = 0.5  # a gate answers when its probability is at least this

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = np.nan_to_num((np.atleast_2d(x) - np.array(self.mean)) / np.array(self.scale))
        return z @ np.array(self.weights) + self.bias


class FittedWith(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str  # the GGUF file's name
    model_sha256: str
    prompts_sha256: str
    data: tuple[dict, ...]  # one entry per question set: file, split, items, documents
    settings: dict  # the answering settings the candidates were produced with
    scikit_learn: str
    date: str


class Fitted(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int = FORMAT
    fitted_with: FittedWith
    starter: Linear  # start-word features -> does an answer start here (which spans get scored)
    ranker: Linear  # span features -> is this the answer
    gate: Linear  # answer features -> does the document answer the question (span decoding)
    evidence_gate: Linear  # the same from the evidence alone (free decoding: no span scores)
    measured: dict = {}  # cross-validated numbers on the fitting data


class ReaderGate(BaseModel):
    """The reader's abstention gate, with the reader file it was fitted for."""

    model_config = ConfigDict(frozen=True)

    format: int = FORMAT
    reader: str  # the ONNX file's name
    reader_sha256: str
    data: tuple[dict, ...]
    settings: dict
    scikit_learn: str
    date: str
    gate: Linear  # reader and evidence signals -> is the reader's answer right
    model: str | None = None  # decoding both: the GGUF file whose span likelihoods rerank the reader's spans
    model_sha256: str | None = None
    llm_weight: float = 0.0  # ... and their weight against the reader's scores
    measured: dict = {}


READER_GATE = FITTED_DIR / "reader.json"


def reader_gate_path(model: Path | None) -> Path:
    """assistant/fitted/reader.json, or for decoding both reader-<model file stem>.json."""
    return READER_GATE if model is None else FITTED_DIR / f"reader-{model.stem}.json"


def load_reader_gate(path: Path, reader: Path, features: tuple[str, ...], model: Path | None = None) -> ReaderGate:
    """The reader's gate at `path`, refused unless fitted for this reader file, these features and
    (decoding both) this model file."""
    fix = (f"run 'assistant fit --reader-model {reader}" + (f" --decoding both --model {model}" if model else "")
           + "' (or pass --fit-file)")
    gate = _read(ReaderGate, path, "fitted reader gate", fix)
    if gate.reader_sha256 != file_sha256(reader):
        raise AssistantError(f"{path} was fitted for the reader {gate.reader} (sha256 {gate.reader_sha256[:12]}), "
                             f"not for {reader.name} (sha256 {file_sha256(reader)[:12]}); {fix}")
    if gate.gate.features != features:
        raise AssistantError(f"{path} was fitted with other features than this version computes; {fix}")
    if model is not None and gate.model_sha256 != file_sha256(model):
        raise AssistantError(f"{path} was not fitted for decoding both with {model.name}; {fix}")
    return gate


def _read(kind: type[Read], path: Path, what: str, fix: str) -> Read:
    """The fitted file at `path` as `kind`; one line naming `fix` when it is missing or unreadable."""
    try:
        return kind.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise AssistantError(f"no {what} at {path}; {fix}") from None
    except (OSError, ValidationError) as e:
        reason = e.errors()[0]["msg"] if isinstance(e, ValidationError) else e.strerror
        raise AssistantError(f"cannot read the {what} {path} ({reason}); {fix}") from None


def default_path(model: Path) -> Path:
    """Where the fit of a model file lives unless told otherwise: assistant/fitted/<file stem>.json."""
    return FITTED_DIR / f"{model.stem}.json"


@lru_cache(maxsize=8)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered while its size and modification time stay the same."""
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


def load_fitted(path: Path, model: Path | None, prompts_sha256: str, features: dict[str, tuple[str, ...]]) -> Fitted:
    """The fitted file at `path`, refused unless it was fitted for this model file, these prompts
    and these feature names (`features`: ranker, gate and evidence_gate names as the code has them).
    Without a `model` (a server answers), only the feature names are checked."""
    fix = f"run 'assistant fit --model {model}' (or pass --fit-file)" if model else "pass --fit-file"
    fitted = _read(Fitted, path, "fitted ranker and gate", fix)
    if fitted.format != FORMAT:
        raise AssistantError(f"{path} is fitted file format {fitted.format}, this version reads {FORMAT}; {fix}")
    used = fitted.fitted_with
    if model is not None and used.model_sha256 != file_sha256(model):
        raise AssistantError(f"{path} was fitted for {used.model} (sha256 {used.model_sha256[:12]}), "
                             f"not for {model.name} (sha256 {file_sha256(model)[:12]}); {fix}")
    if model is not None and used.prompts_sha256 != prompts_sha256:
        raise AssistantError(f"{path} was fitted with other prompts than those in use; {fix}")
    for name, wanted in features.items():
        if getattr(fitted, name).features != wanted:
            raise AssistantError(f"{path} was fitted with other {name} features than this version computes; {fix}")
    return fitted
