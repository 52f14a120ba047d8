"""The fitted start and span rankers and abstention gates of one model and prompt set, with what they were fitted on.

The weights are properties of the model that scored the spans and of the prompts it was asked
with: the same span ranker rewards a contrast with a content-free question for one model and is
hurt by it for another. So the file records the model file's SHA-256 and the prompts' digest, and
loading it with anything else is an error that names the fix. Fitting is `tools/fitting.py`; this
module only reads, checks and applies (numpy, no scikit-learn at answer time).
"""

import hashlib
from stat import S_ISREG
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from assistant.errors import AssistantError
from assistant.loading import read_bounded

FORMAT = 1
Read = TypeVar("Read", bound=BaseModel)
FITTED_DIR = Path(__file__).resolve().parent / "fitted"
MAX_FITTED_BYTES = 16_000_000  # a fitted file is a few kB; anything near this is not one


class Linear(BaseModel):
    """A logistic model on standardised features: logit = w . (x - mean) / scale + bias."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)  # a NaN bias would silently abstain on everything

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = Field(0.5, ge=0, le=1)  # a gate answers when its probability is at least this

    @model_validator(mode="after")
    def _one_number_per_feature(self) -> "Linear":
        n = len(self.features)
        if not n == len(self.weights) == len(self.mean) == len(self.scale):
            raise ValueError(f"{n} features but {len(self.weights)} weights, {len(self.mean)} means and "
                             f"{len(self.scale)} scales")
        if any(s <= 0 for s in self.scale):
            raise ValueError("a scale is not positive")
        return self

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

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

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
    if not path.exists():
        raise AssistantError(f"no {what} at {path}; {fix}")
    try:
        return kind.model_validate_json(read_bounded(path, MAX_FITTED_BYTES, f"the {what} "))
    except AssistantError as e:
        raise AssistantError(f"{e}; {fix}") from None
    except ValidationError as e:
        raise AssistantError(f"cannot read the {what} {path} ({_reason(e)}); {fix}") from None


def _reason(e: ValidationError) -> str:
    """'gate.bias: Input should be a finite number', the first thing wrong, where it is."""
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg'].removeprefix('Value error, ')}" if where else first["msg"]


def default_path(model: Path) -> Path:
    """Where the fit of a model file lives unless told otherwise: assistant/fitted/<file stem>.json."""
    return FITTED_DIR / f"{model.stem}.json"


@lru_cache(maxsize=8)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered while its size and modification time stay the same. Only a
    regular file is read: a device would be read for ever."""
    stat = path.stat()
    if not S_ISREG(stat.st_mode):
        raise AssistantError(f"{path} is not a regular file (a device, pipe or socket); give a file")
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


def load_fitted(path: Path, model: Path | None, prompts_sha256: str, features: dict[str, tuple[str, ...]]) -> Fitted:
    """The fitted file at `path`, refused unless it was fitted for this model file, these prompts
    and these feature names (`features`: ranker, gate and evidence_gate names as the code has them).
    Without a `model` (a server answers), only the feature names are checked."""
    fix = f"run 'assistant fit --decoding span --model {model}' (or pass --fit-file)" if model else "pass --fit-file"
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
