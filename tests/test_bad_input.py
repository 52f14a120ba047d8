"""Bad input, everywhere the user can give it: each case is one 'Error: ...' line on stderr, a
non-zero exit, no traceback, and nothing lost: the index that was there still answers afterwards.

Cases that leave the index alone run against one copy of the session index and must leave its
every byte as it was; cases about a damaged or mismatched index build their own small one and
show that 'assistant index --rebuild', as the error says, brings it back without losing a document.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from assistant.cli import main
from assistant.fitted import READER_GATE, default_path
from assistant.reading import READER_FILE
from assistant.settings import PROJECT_ROOT, packaged_embedding_path, packaged_model_path
from test_cli import CEASEFIRE, SCRIPT, one_error_line

Q = "Who is Putin's spokesperson?"


@dataclass(frozen=True)
class Case:
    """`make(tmp_path, index_dir)` -> (arguments, environment); the error line must hold `says`."""

    make: Callable[[Path, Path], tuple[list, dict]]
    code: int
    says: str


def ask(*args: object, env: dict | None = None) -> Callable[[Path, Path], tuple[list, dict]]:
    return lambda tmp, index: (["ask", "--index-dir", index, "--no-gate", *args], env or {})


def index_file(name: str, content: bytes) -> Callable[[Path, Path], tuple[list, dict]]:
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        (tmp / name).write_bytes(content)
        return ["index", "--index-dir", index, tmp / name], {}

    return make


def questions_file(content: bytes, *flags: str) -> Callable[[Path, Path], tuple[list, dict]]:
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        (tmp / "questions.jsonl").write_bytes(content)
        return ["ask", "--index-dir", index, "--no-gate", *flags, "--questions", tmp / "questions.jsonl"], {}

    return make


def sparse_file(tmp: Path, index: Path) -> tuple[list, dict]:
    path = tmp / "huge.txt"
    with open(path, "wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # 100 MB that take no disk
    return ["index", "--index-dir", index, path], {}


def directory(tmp: Path, index: Path) -> tuple[list, dict]:
    (tmp / "notes.txt").mkdir()
    return ["index", "--index-dir", index, tmp / "notes.txt"], {}


def blank_pdf(tmp: Path, index: Path) -> tuple[list, dict]:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.write(tmp / "scan.pdf")
    return ["index", "--index-dir", index, tmp / "scan.pdf"], {}


def truncated_gguf(tmp: Path, index: Path) -> tuple[list, dict]:
    with open(packaged_model_path(), "rb") as whole:
        (tmp / "cut.gguf").write_bytes(whole.read(2_000_000))
    return ["ask", "--index-dir", index, "--no-gate", "--decoding", "span", "--model", tmp / "cut.gguf", Q], {}


def cut_reader(tmp: Path, index: Path) -> tuple[list, dict]:
    """The shipped reader's card beside the first megabyte of its weights."""
    (tmp / "reader.onnx").write_bytes(READER_FILE.read_bytes()[:1_000_000])
    shutil.copy(READER_FILE.with_suffix(".json"), tmp / "reader.json")
    return ["ask", "--index-dir", index, "--reader-model", tmp / "reader.onnx", Q], {}


def broken_card(tmp: Path, index: Path) -> tuple[list, dict]:
    (tmp / "r.onnx").write_bytes(b"x")
    (tmp / "r.json").write_text("{")
    return ["ask", "--index-dir", index, "--reader-model", tmp / "r.onnx", Q], {}


def fitted_edit(change: Callable[[dict], None], *flags: str) -> Callable[[Path, Path], tuple[list, dict]]:
    """The shipped fitted file of the decoding in `flags` (the reader's gate by default), changed by `change`."""
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        source = default_path(packaged_model_path()) if "span" in flags else READER_GATE
        fitted = json.loads(source.read_text(encoding="utf-8"))
        change(fitted)
        (tmp / "fitted.json").write_text(json.dumps(fitted), encoding="utf-8")  # NaN and Infinity as JSON5 writes them
        return ["ask", "--index-dir", index, *flags, "--fit-file", tmp / "fitted.json", Q], {}

    return make


def not_sqlite(tmp: Path, index: Path) -> tuple[list, dict]:
    (tmp / "scores.sqlite").write_text("these are not scores\n" * 100, encoding="utf-8")
    return ["ask", "--index-dir", index, "--decoding", "span", "--score-cache", tmp / "scores.sqlite", Q], {}


def prompts_linked_to(device: str) -> Callable[[Path, Path], tuple[list, dict]]:
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        shutil.copytree(PROJECT_ROOT / "prompts", tmp / "prompts")
        (tmp / "prompts" / "system.txt").unlink()
        (tmp / "prompts" / "system.txt").symlink_to(device)
        return ["ask", "--index-dir", index, "--no-gate", "--decoding", "span", "--prompts-dir", tmp / "prompts", Q], {}

    return make


def truncated_embedding(tmp: Path, index: Path) -> tuple[list, dict]:
    """The packaged model's files, its weights cut to a tenth."""
    folder = tmp / "minilm"
    folder.mkdir()
    for item in packaged_embedding_path().iterdir():
        if item.name == "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes()[: item.stat().st_size // 10])
        else:
            (folder / item.name).symlink_to(item)
    return ["ask", "--index-dir", index, "--no-gate", Q], {"ASSISTANT_EMBEDDING_MODEL": str(folder)}


def fifo(tmp: Path, index: Path) -> tuple[list, dict]:
    os.mkfifo(tmp / "pipe.txt")  # opened without a writer, a read would wait forever
    return ["index", "--index-dir", index, tmp / "pipe.txt"], {}


def link_to(device: str) -> Callable[[Path, Path], tuple[list, dict]]:
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        (tmp / "endless.txt").symlink_to(device)  # stat says 0 bytes; a read would never end
        return ["index", "--index-dir", index, tmp / "endless.txt"], {}

    return make


def a_file_as(command: str) -> Callable[[Path, Path], tuple[list, dict]]:
    def make(tmp: Path, index: Path) -> tuple[list, dict]:
        (tmp / "not-a-folder").write_text("x", encoding="utf-8")
        return [command, "--index-dir", tmp / "not-a-folder", *([Q] if command == "ask" else [])], {}

    return make


CASES = {
    # the question
    "empty-question": Case(ask(""), 1, "the question is empty"),
    "whitespace-question": Case(ask(" \t \n "), 1, "the question is empty"),
    "2001-char-question": Case(ask("why " * 500 + "a"), 1, "2001 characters, over the 2000 limit"),
    "control-character-question": Case(ask("Who\x07 is Peskov?"), 1, "control characters"),
    "question-and-questions-file": Case(ask(Q, "--questions", "-"), 2, "give a QUESTION or --questions FILE"),
    "no-question": Case(ask(), 2, "give a QUESTION or --questions FILE"),
    "missing-questions-file": Case(ask("--questions", "/nonexistent/questions.txt"), 2, "No such file"),
    "questions-file-bad-jsonl": Case(questions_file(b'{"question": "Who?"}\n{"q": 1}\n'), 1, "line 2"),
    "questions-file-not-utf8": Case(questions_file("Qui a dit « café » ?\n".encode("latin-1")), 1, "not UTF-8"),
    "questions-file-long-question": Case(questions_file(b"why " * 600), 1, "over the 2000 limit"),
    "undecodable-question-bytes": Case(ask(b"Who is \xff\xfe?".decode("utf-8", "surrogateescape")), 1,
                                       "not valid UTF-8"),
    "questions-file-null-question": Case(questions_file(b'{"question": null}\n'), 1,
                                         "line 1 of the questions file: 'question' must be text, not null"),
    "questions-file-number-question": Case(questions_file(b'Who?\n{"question": 42}\n'), 1, "line 2 of"),
    "questions-file-list-question": Case(questions_file(b'{"question": ["Who?"]}\n'), 1, "not a list"),
    "questions-file-object-question": Case(questions_file(b'{"question": {"q": "Who?"}}\n'), 1, "not an object"),
    "questions-file-json-not-object": Case(questions_file(b'{"question": "Who?"\n'), 1,
                                           "line 1 of the questions file is not a JSON object"),
    "questions-file-bad-question-line": Case(questions_file(b"Who?\n\nWho\x07?\n"), 1,
                                             "line 3 of the questions file: the question contains control"),
    "questions-file-only-blank-lines": Case(questions_file(b"\n  \n\t\n"), 1, "has no questions"),
    "questions-file-empty": Case(questions_file(b""), 1, "the questions file is empty"),
    # flags and settings
    "top-k-0": Case(ask("--top-k", "0", Q), 2, "invalid setting top_k"),
    "top-k-51": Case(ask("--top-k", "51", Q), 2, "invalid setting top_k"),
    "top-k-not-a-number": Case(ask("--top-k", "many", Q), 2, "'many' is not a valid integer"),
    "threads-0": Case(ask("--threads", "0", Q), 2, "invalid setting n_threads"),
    "bad-choice": Case(ask("--retrieval", "magic", Q), 2, "'magic' is not one of"),
    "unknown-flag": Case(ask("--frobnicate", Q), 2, "No such option '--frobnicate'"),
    "unknown-index-flag": Case(lambda tmp, index: (["index", "--index-dir", index, "--fast"], {}), 2, "--fast"),
    "unknown-command": Case(lambda tmp, index: (["nonsense"], {}), 2, "No such command 'nonsense'"),
    "bad-environment-setting": Case(ask(Q, env={"ASSISTANT_TOP_K": "zero"}), 2, "invalid setting top_k"),
    "max-file-mb-inf": Case(lambda tmp, index: (["index", "--index-dir", index, "--max-file-mb", "inf"], {}), 2,
                            "invalid setting max_file_mb (--max-file-mb, ASSISTANT_MAX_FILE_MB): Input should be a "
                            "finite number (allowed: above 0, at most 100)"),
    "max-file-mb-nan-environment": Case(ask(Q, env={"ASSISTANT_MAX_FILE_MB": "nan"}), 2, "invalid setting max_file_mb"),
    "ui-max-file-mb-1e300": Case(lambda tmp, index: (["ui", "--index-dir", index, "--max-file-mb", "1e300"], {}), 2,
                                 "invalid setting max_file_mb"),
    "n-ctx-10-to-the-12": Case(ask(Q, env={"ASSISTANT_N_CTX": str(10**12)}), 2,
                               "invalid setting n_ctx (--n-ctx, ASSISTANT_N_CTX): Input should be less than or equal "
                               "to 32768 (allowed: 512 to 32768)"),
    "server-timeout-inf": Case(ask("--server-timeout", "inf", Q), 2, "invalid setting server_timeout"),
    "embed-batch-size-10-to-the-12": Case(ask("--embed-batch-size", str(10**12), Q), 2,
                                          "invalid setting embed_batch_size"),
    # models
    "missing-model-file": Case(ask("--decoding", "span", "--model", "/nonexistent/missing.gguf", Q), 1,
                               "no model file at /nonexistent"),
    "truncated-model-file": Case(truncated_gguf, 1, "cannot load model"),
    "model-that-is-not-gguf": Case(ask("--decoding", "span", "--model", SCRIPT, Q), 1, "cannot load model"),
    "missing-reader": Case(ask("--reader-model", "/nonexistent/reader.onnx", Q), 1,
                           "no reader card at /nonexistent/reader.json"),
    "truncated-reader": Case(cut_reader, 1, "is not the reader its card describes"),
    "reader-card-not-json": Case(broken_card, 1, "cannot read the reader card"),
    "missing-embedding-model": Case(ask(Q, env={"ASSISTANT_EMBEDDING_MODEL": "/nonexistent/minilm"}), 1,
                                    "no embedding model at /nonexistent/minilm"),
    "truncated-embedding-model": Case(truncated_embedding, 1, "cannot load the embedding model"),
    # fitted, cache, prompt and question files
    "fit-file-dev-zero": Case(lambda tmp, index: (["ask", "--index-dir", index, "--fit-file", "/dev/zero", Q], {}), 1,
                              "the fitted reader gate /dev/zero is not a regular file"),
    "fitted-weights-shorter": Case(fitted_edit(lambda f: f["gate"].update(weights=f["gate"]["weights"][:-1])), 1,
                                   "features but"),
    "fitted-nan-bias": Case(fitted_edit(lambda f: f["gate"].update(bias=float("nan"))), 1,
                            "gate.bias: Input should be a finite number"),
    "fitted-infinite-threshold": Case(fitted_edit(lambda f: f["gate"].update(threshold=float("inf"))), 1,
                                      "gate.threshold"),
    "fitted-zero-scale": Case(fitted_edit(lambda f: f["gate"]["scale"].__setitem__(0, 0.0)), 1,
                              "a scale is not positive"),
    "span-fitted-starter-mismatch": Case(
        fitted_edit(lambda f: f["starter"].update(weights=[1.0]), "--decoding", "span"), 1, "features but 1 weights"),
    "score-cache-not-sqlite": Case(not_sqlite, 1, "cannot use the score cache"),
    "score-cache-a-folder": Case(ask("--decoding", "span", "--score-cache", "/tmp", Q), 1, "is not a regular file"),
    "prompt-file-dev-zero": Case(prompts_linked_to("/dev/zero"), 1, "system.txt is not a regular file"),
    "questions-file-dev-zero": Case(ask("--questions", "/dev/zero"), 1, "over 64 million characters"),
    "reader-model-dev-zero": Case(ask("--reader-model", "/dev/zero", Q), 1, "no reader card at /dev/zero.json"),
    # documents
    "missing-document": Case(lambda tmp, index: (["index", "--index-dir", index, tmp / "gone.txt"], {}), 1,
                             "no such file"),
    "non-utf8-document": Case(index_file("latin1.txt", "Un café crème.".encode("latin-1")), 1, "not UTF-8 text"),
    "binary-document": Case(index_file("photo.txt", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), 1, "looks binary"),
    "zero-byte-document": Case(index_file("empty.txt", b""), 1, "no text to index"),
    "whitespace-document": Case(index_file("blank.md", b"  \n\t\r\n "), 1, "no text to index"),
    "pdf-without-text": Case(blank_pdf, 1, "no extractable text"),
    "corrupt-pdf": Case(index_file("broken.pdf", b"%PDF-1.4\n1 0 obj garbage\n%%EOF\n"), 1, "broken.pdf"),
    "100-mb-document": Case(sparse_file, 1, "over the 10 MB limit"),
    "directory-as-document": Case(directory, 1, "is a directory"),
    "unsupported-file-type": Case(index_file("sheet.xlsx", b"a,b"), 1, "unsupported file type"),
    "fifo-as-document": Case(fifo, 1, "is not a regular file"),
    "link-to-dev-zero": Case(link_to("/dev/zero"), 1, "is not a regular file"),
    "link-to-dev-urandom": Case(link_to("/dev/urandom"), 1, "is not a regular file"),
    "emoji-only-document": Case(index_file("emoji.txt", "😀🎉 🚀 ✨\n".encode()), 1, "no words to index"),
    "newline-in-a-name": Case(index_file("a\nb.xlsx", b"x"), 1, "a\\nb.xlsx: unsupported"),
    # the index
    "ask-without-an-index": Case(lambda tmp, index: (["ask", "--index-dir", tmp / "none", Q], {}), 1,
                                 "no index at"),
    "index-dir-is-a-file-index": Case(a_file_as("index"), 1, "is a file, not a folder"),
    "index-dir-is-a-file-ask": Case(a_file_as("ask"), 1, "is a file, not a folder"),
    "ask-from-another-document": Case(ask("--doc", "a\nb.txt", Q), 1, "no document 'a\\nb.txt'"),
    "context-too-small": Case(ask("--decoding", "span", Q, env={"ASSISTANT_N_CTX": "512"}), 1,
                              "room for the answer (64)"),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of the index but Chroma's own, which Chroma rewrites whenever it opens them."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "chroma" not in p.relative_to(folder).parts}


@pytest.fixture(scope="module")
def kept_index(tmp_path_factory, index_dir) -> Path:
    """A copy of the session index that every case below runs against."""
    return shutil.copytree(index_dir, tmp_path_factory.mktemp("kept") / "index")


def invoke(args: list, env: dict, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, input=input)


SLOW_CASES = {"missing-embedding-model", "truncated-embedding-model", "context-too-small", "ask-without-an-index",
              "index-dir-is-a-file-ask", "ask-from-another-document"}  # about 4 s each; the rest take milliseconds


@pytest.mark.parametrize("case", [pytest.param(case, id=name, marks=[pytest.mark.slow] if name in SLOW_CASES else [])
                                  for name, case in CASES.items()])
def test_bad_input(case, tmp_path, kept_index):
    before = snapshot(kept_index)
    args, env = case.make(tmp_path, kept_index)
    line = one_error_line(invoke(args, env, input=Q + "\n"), case.code)
    assert case.says in line, line
    assert snapshot(kept_index) == before


def test_an_unreadable_document(kept_index):
    """Root reads any file, so as root the command runs as 'nobody' (effective uid), to whom the file
    says no; any other user is refused as it is."""
    folder = Path(tempfile.mkdtemp(prefix="unreadable-"))
    try:
        folder.chmod(0o755)
        secret = folder / "secret.txt"
        secret.write_text("The code is 1234.", encoding="utf-8")
        secret.chmod(0o000)
        before = snapshot(kept_index)
        root = os.geteuid() == 0
        if root:
            os.seteuid(65534)
        try:
            result = invoke(["index", "--index-dir", kept_index, secret], {})
        finally:
            if root:
                os.seteuid(0)
        assert one_error_line(result, 1) == f"Error: cannot read {secret}: Permission denied"
        assert snapshot(kept_index) == before
    finally:
        shutil.rmtree(folder)


@pytest.mark.slow
def test_the_index_still_answers_after_every_bad_input(kept_index, article):
    """Runs after the cases above, over the same copy."""
    result = invoke(["ask", "--index-dir", kept_index, "--no-gate", "--json", CEASEFIRE], {})
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert "thirty-day" in answer["answer"].lower()
    assert all(article[c["start"] : c["end"]] == c["text"] for c in answer["citations"])


# --- an index that is damaged or was built otherwise -------------------------------------------------

HARBOR = ("The lighthouse at Port Elm was built in 1887 by the engineer Mara Quill. The ferry to Gull Island "
          "leaves every morning at seven o'clock. The harbor master, Jonas Reed, keeps the keys to the tower.")


@pytest.fixture(scope="module")
def narrow_embedding(tmp_path_factory) -> Path:
    """A real sentence-transformers model of another dimension: the packaged one with a 384 -> 64 layer."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    source, folder = packaged_embedding_path(), tmp_path_factory.mktemp("emb") / "minilm-64"
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "modules.json":
            (folder / item.name).symlink_to(item)
    modules = json.loads((source / "modules.json").read_text())
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    modules = modules[:2] + [dense] + [{**m, "idx": 3, "name": "3"} for m in modules[2:]]
    (folder / "modules.json").write_text(json.dumps(modules))
    torch.manual_seed(0)
    (folder / "2_Dense").mkdir()
    Dense(384, 64).save(str(folder / "2_Dense"))
    return folder


def live(index: Path) -> Path:
    return index / (index / "CURRENT").read_text().strip()


def garbage_over_chroma(index: Path) -> dict:
    (live(index) / "chroma" / "chroma.sqlite3").write_bytes(b"this is not a database\x00" * 500)
    return {}


def of_format_2(index: Path) -> dict:
    """As an index of format 2 recorded itself (it also named a collection of sentence vectors)."""
    manifest = json.loads((live(index) / "manifest.json").read_text())
    manifest["shape"]["format"] = 2
    manifest["collections"]["sentences"] = manifest["collections"]["chunks"].replace("chunks", "sentences")
    (live(index) / "manifest.json").write_text(json.dumps(manifest))
    return {}


DAMAGE = {
    "corrupt-chroma": (garbage_over_chroma, {}, "is damaged"),
    "format-2": (of_format_2, {}, "built with other settings (format 2, not 3)"),
    "other-chunking": (None, {"ASSISTANT_CHUNK_TOKENS": "120"},
                       "built with other settings (chunk_tokens 120, not 200)"),
    "other-embedding-dimension": (None, "narrow", "built with other settings (embedding minilm-64@"),
}


def test_an_index_of_the_first_layout_is_named_not_migrated(tmp_path):
    """Format 1 kept one flat folder (no CURRENT); it is not read, and the error says what to do."""
    index = tmp_path / "index"
    (index / "docs").mkdir(parents=True)
    (index / "manifest.json").write_text('{"documents": {}}', encoding="utf-8")
    line = one_error_line(invoke(["ask", "--index-dir", index, "Who keeps the keys?"], {}), 1)
    assert line == f"Error: the index at {index} has an older layout; delete it and run 'assistant index'"


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "built_with", "says"), DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_or_mismatched_index(damage, built_with, says, tmp_path, narrow_embedding):
    if built_with == "narrow":
        built_with = {"ASSISTANT_EMBEDDING_MODEL": str(narrow_embedding)}
    (tmp_path / "harbor.txt").write_text(HARBOR, encoding="utf-8")
    index = tmp_path / "index"
    built = invoke(["index", "--index-dir", index, tmp_path / "harbor.txt"], built_with)
    assert built.exit_code == 0, built.output
    if built_with == {"ASSISTANT_EMBEDDING_MODEL": str(narrow_embedding)}:
        assert json.loads((live(index) / "manifest.json").read_text())["dimension"] == 64
    if damage:
        damage(index)
    asked = ["ask", "--index-dir", index, "--no-gate", "Who keeps the keys to the tower?"]
    line = one_error_line(invoke(asked, {}), 1)
    assert says in line and line.endswith("run 'assistant index --rebuild'"), line
    # The fix the message gives works, and keeps the document without being given it again.
    rebuilt = invoke(["index", "--index-dir", index, "--rebuild"], {})
    assert rebuilt.exit_code == 0 and "Indexed harbor.txt" in rebuilt.stderr, rebuilt.output
    assert sorted(p.name for p in index.iterdir()) == ["CURRENT", live(index).name, "lock"]
    answered = invoke(asked, {})
    assert answered.exit_code == 0 and "Jonas Reed" in answered.stdout, answered.output
