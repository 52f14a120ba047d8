"""Shared fixtures: one real index of the bundled article and one real Assistant per session.

Building the index (embedding ~100 sentences) and loading the models cost seconds, so they are
built once in a session temp folder; tests that change an index build their own small one.

`ungated` and `gated` answer with the shipped reader (`gated` with its fitted gate,
assistant/fitted/reader.json). `weightless` decodes spans with the packaged model and a fitted file
written here whose weights are all zero: for tests of the span search that must not depend on
what was fitted.
"""

import assistant  # noqa: F401  (first: sets the offline variables before any library is imported)

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.answering import Assistant
from assistant.indexing import IndexReport, index_documents
from assistant.loading import load_document
from assistant.settings import DEFAULT_CORPUS, Settings

SCRIPT = Path(sys.executable).parent / "assistant"


@pytest.fixture(scope="session", autouse=True)
def clean_environment():
    """No ASSISTANT_* variable of the developer's shell reaches any test or session fixture."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("ASSISTANT_")]:
            mp.delenv(key)
        yield


@pytest.fixture(scope="session")
def session_index(tmp_path_factory, clean_environment) -> tuple[Path, IndexReport]:
    """The bundled article, indexed once with the default settings."""
    index_dir = tmp_path_factory.mktemp("session") / "index"
    report = index_documents([load_document(DEFAULT_CORPUS, 10)], Settings(index_dir=index_dir))
    return index_dir, report


@pytest.fixture(scope="session")
def index_dir(session_index) -> Path:
    return session_index[0]


@pytest.fixture(scope="session")
def settings(index_dir) -> Settings:
    """Default settings over the session index, without the abstention gate."""
    return Settings(index_dir=index_dir, abstain_gate=False)


@pytest.fixture(scope="session")
def ungated(settings) -> Assistant:
    """The one Assistant that loads the models; answers without the abstention gate."""
    return Assistant(settings)


@pytest.fixture(scope="session")
def gated(index_dir, ungated) -> Assistant:
    """Default settings (the fitted gate on), sharing the loaded models."""
    return Assistant(Settings(index_dir=index_dir), share=ungated)


def write_fitted(path: Path, settings: Settings, **biases: float) -> Path:
    """A fitted file for the model and prompts of `settings` whose weights are all zero, so each
    part's logit is its bias (`starter`, `ranker`, `gate`, `evidence_gate`: 0 unless given; a
    gate answers at P >= 0.5, so a gate of bias 0 answers everything and one of -5 nothing)."""
    from assistant.answering import FEATURES
    from assistant.fitted import Fitted, FittedWith, Linear, file_sha256
    from assistant.prompting import load_prompts

    model = settings.model_path()
    parts = {name: Linear(features=names, weights=(0.0,) * len(names), bias=biases.get(name, 0.0),
                          mean=(0.0,) * len(names), scale=(1.0,) * len(names))
             for name, names in FEATURES.items()}
    used = FittedWith(model=model.name, model_sha256=file_sha256(model),
                      prompts_sha256=load_prompts(settings.prompts_dir).digest, data=(), settings={},
                      scikit_learn="none", date="2000-01-01")
    path.write_text(Fitted(fitted_with=used, **parts).model_dump_json(indent=1), encoding="utf-8")
    return path


def write_reader_gate(path: Path, settings: Settings, bias: float = 0.0) -> Path:
    """A reader gate for the reader of `settings` whose weights are all zero: it answers every
    question at bias >= 0 and none at a negative bias."""
    from assistant.abstention import READER_FEATURES
    from assistant.fitted import Linear, ReaderGate, file_sha256

    n = len(READER_FEATURES)
    gate = Linear(features=READER_FEATURES, weights=(0.0,) * n, bias=bias, mean=(0.0,) * n, scale=(1.0,) * n)
    reader = settings.reader_path()
    made = ReaderGate(reader=reader.name, reader_sha256=file_sha256(reader), data=(), settings={},
                      scikit_learn="none", date="2000-01-01", gate=gate)
    path.write_text(made.model_dump_json(indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def zero_reader_gate(tmp_path_factory, clean_environment) -> Path:
    """A reader gate for the shipped reader that answers everything (see write_reader_gate)."""
    return write_reader_gate(tmp_path_factory.mktemp("fitted") / "reader-zero.json", Settings())


@pytest.fixture(scope="session")
def zero_fit_file(tmp_path_factory, clean_environment) -> Path:
    """A fitted file for the packaged model and prompts with zero weights (see write_fitted)."""
    return write_fitted(tmp_path_factory.mktemp("fitted") / "zero.json", Settings())


@pytest.fixture(scope="session")
def weightless(index_dir, zero_fit_file) -> Assistant:
    """An Assistant over the session index that loads the models itself and needs no fitted file
    of the packaged model: its ranker and gates have zero weights, its gate is off. What it answers
    means nothing; what it measures (evidence, start words, span scores) is the real pipeline's."""
    return Assistant(Settings(index_dir=index_dir, abstain_gate=False, fit_file=zero_fit_file, decoding="span"))


TOWN = (
    "Notes on Larkspur Hollow\n\n"
    "Larkspur Hollow is a small river town of about four thousand people. Its council meets in the old mill on the "
    "first Monday of every month. The council's spokesperson is Harriet Vance, a former schoolteacher who answers "
    "questions from the press. The mayor, Owen Tallis, was elected in 2019 after a flood destroyed the wooden bridge. "
    "A new stone bridge opened in 2021 and cost nine million pounds. The town's bakery, run by Ida Brook, sells rye "
    "bread every morning.\n"
)
TOWN_QUESTIONS = [  # made up with the document: nothing here is about the bundled article
    ("Who is the council's spokesperson?", "Harriet Vance"),
    ("Who runs the town's bakery?", "Ida Brook"),
    ("In what year was the mayor elected?", "2019"),
]


@pytest.fixture(scope="session")
def town_index(tmp_path_factory, clean_environment) -> Path:
    """A made-up document (TOWN, as town.txt) indexed on its own."""
    return index_text(tmp_path_factory.mktemp("town"), "town.txt", TOWN)


def index_text(folder: Path, name: str, text: str) -> Path:
    """`text` written to folder/name and indexed alone into folder/index; returns that index."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    index_dir = folder / "index"
    index_documents([load_document(path, 10)], Settings(index_dir=index_dir))
    return index_dir


@pytest.fixture(scope="session")
def answer_of(ungated):
    """`ungated.ask`, each question answered once per session."""
    cache = {}

    def answer(question: str):
        if question not in cache:
            cache[question] = ungated.ask(question)
        return cache[question]

    return answer


@pytest.fixture(scope="session")
def article() -> str:
    return load_document(DEFAULT_CORPUS, 10).text


@pytest.fixture(scope="session")
def write_text_pdf():
    return _write_text_pdf


def _write_text_pdf(path: Path, lines: list[str]) -> Path:
    """A minimal one-page PDF, written by hand, whose content stream draws `lines` in Helvetica."""
    stream = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(command: list[str], ready_url: str, log: Path, env: dict | None = None,
          seconds: float = 180) -> Iterator[subprocess.Popen]:
    """Run a server until the block ends; ready when `ready_url` answers 200 within `seconds`."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + seconds
        while not _answers(ready_url):
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready in {seconds:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class UiServer:
    url: str
    pid: int


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory, index_dir) -> Iterator[UiServer]:
    """`assistant ui` in a subprocess on a free loopback port, over a copy of the session index."""
    copied = tmp_path_factory.mktemp("ui") / "index"
    shutil.copytree(index_dir, copied)
    port = free_port()
    env = {**os.environ, "ASSISTANT_INDEX_DIR": str(copied), "ASSISTANT_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/"
    with serve([str(SCRIPT), "ui"], url, tmp_path_factory.mktemp("ui-log") / "server.log", env) as process:
        yield UiServer(url, process.pid)
