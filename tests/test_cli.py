"""The `assistant` command: answers on stdout, one "Error: ..." line on stderr, exit codes 0, 1 and 2.

Most tests run the click command in-process (CliRunner); a few run the installed console script.
Bad input of every kind is in test_bad_input.py, which reuses the helpers here.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TOWN, TOWN_QUESTIONS

from assistant.cli import main
from assistant.fitted import load_fitted
from assistant.settings import PROJECT_ROOT, Settings, bounds

GRAHAM = "Who said that Putin is trying to walk a thin line?"  # dev: q041
CEASEFIRE = "How long a ceasefire did Trump call for?"  # dev: q011, in other words
KEYS = ["question", "answer", "abstained", "citations", "answer_span", "timing"]
QUESTIONS = PROJECT_ROOT / "eval" / "questions.jsonl"
SCRIPT = Path(sys.executable).parent / "assistant"
if not SCRIPT.exists():
    SCRIPT = PROJECT_ROOT / ".venv" / "bin" / "assistant"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def ask(index_dir: Path, *args: str, input: str | None = None):
    """`assistant ask` over the session index; the gate is not the subject of these tests."""
    return run("ask", "--index-dir", index_dir, "--no-gate", *args, input=input)


def json_lines(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    for obj in objects:
        assert list(obj) == KEYS
        assert list(obj["timing"]) == ["retrieve_s", "generate_s", "total_s"]
        for c in obj["citations"]:
            assert list(c) == ["n", "doc", "start", "end", "text"]
        if obj["abstained"]:
            assert obj["answer_span"] is None
        else:
            assert list(obj["answer_span"]) == ["doc", "start", "end"]
    return objects


def one_error_line(result, code: int) -> str:
    """The exit code, nothing on stdout, and exactly one line on stderr: 'Error: ...'."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.rstrip("\n").split("\n")  # a blank line before the error counts too
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# --- ask ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ask_json_prints_one_object(town_index):
    """On a made-up document: the answer copies document[start:end] of `answer_span`, inside a citation."""
    question, expected = TOWN_QUESTIONS[0]
    (obj,) = json_lines(ask(town_index, "--json", question))
    assert obj["question"] == question and obj["abstained"] is False
    assert obj["citations"]
    for c in obj["citations"]:
        assert c["doc"] == "town.txt" and TOWN[c["start"] : c["end"]] == c["text"]
    span = obj["answer_span"]
    copied = TOWN[span["start"] : span["end"]]
    assert span["doc"] == "town.txt" and copied.lower() in obj["answer"].lower()  # its first letter capitalised
    assert any(c["start"] <= span["start"] and span["end"] <= c["end"] and copied in c["text"]
               for c in obj["citations"])
    assert expected in obj["answer"]


@pytest.mark.slow
def test_ask_plain_output_quotes_the_citation_around_the_copied_span(town_index):
    question, expected = TOWN_QUESTIONS[1]
    result = ask(town_index, question)
    assert result.exit_code == 0, result.output
    answer, *cited = result.stdout.splitlines()
    assert expected in answer and cited
    for line in cited:
        quoted = line.split(": ", 1)[1]
        assert quoted.startswith("“") and quoted.endswith("”") and quoted[1:-1] in TOWN  # no terminal styling in a pipe


@pytest.mark.slow
def test_ask_questions_jsonl_file(index_dir, tmp_path):
    path = tmp_path / "questions.jsonl"
    lines = [
        {"id": "a", "question": CEASEFIRE, "answers": ["thirty-day"], "kind": "number"},
        {"question": GRAHAM, "split": "dev", "extra": [1, 2]},
    ]
    path.write_text("\n".join(json.dumps(item) for item in lines) + "\n\n", encoding="utf-8")
    objects = json_lines(ask(index_dir, "--json", "--questions", path))
    assert [o["question"] for o in objects] == [CEASEFIRE, GRAHAM]
    assert "thirty-day" in objects[0]["answer"].lower() and "Graham" in objects[1]["answer"]


@pytest.mark.slow
def test_ask_questions_text_file(index_dir, tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text(f"{GRAHAM}\n\n{CEASEFIRE}\n", encoding="utf-8")
    objects = json_lines(ask(index_dir, "--json", "--questions", path))
    assert [o["question"] for o in objects] == [GRAHAM, CEASEFIRE]


@pytest.mark.slow
def test_ask_questions_from_stdin_plain_output(index_dir, article):
    """`--questions -` reads stdin; without --json the answer is followed by one line per citation."""
    result = ask(index_dir, "--questions", "-", input=CEASEFIRE + "\n")
    assert result.exit_code == 0, result.output
    answer, *cited = result.stdout.splitlines()
    assert "thirty-day" in answer.lower() and "[1]" in answer
    assert cited
    for n, line in enumerate(cited, start=1):
        prefix = f"  [{n}] article.txt, line "
        assert line.startswith(prefix)
        number, rest = line[len(prefix) :].split(", chars ", 1)
        span, quoted = rest.split(": ", 1)
        start, end = map(int, span.split("-"))
        assert quoted == f"“{article[start:end]}”"
        assert int(number) == article.count("\n", 0, start) + 1


# --- index ----------------------------------------------------------------------------------------


def test_index_a_document_then_again(tmp_path):
    doc = tmp_path / "pets.md"
    doc.write_text("# Pets\n\nCats sleep sixteen hours a day. Dogs bark at night.", encoding="utf-8")
    first = run("index", "--index-dir", tmp_path / "index", doc)
    assert first.exit_code == 0, first.output
    assert first.stdout == ""
    assert "Indexed pets.md" in first.stderr and "3 sentences" in first.stderr
    again = run("index", "--index-dir", tmp_path / "index", doc)
    assert again.exit_code == 0, again.output
    assert "nothing new" in again.stderr and "unchanged: pets.md" in again.stderr


def test_a_pdf_named_md_is_indexed_as_the_pdf_it_is(tmp_path, write_text_pdf):
    doc = write_text_pdf(tmp_path / "minutes.md", ["The harbour board met on Tuesday.", "It approved a new crane."])
    result = run("index", "--index-dir", tmp_path / "index", doc)
    assert result.exit_code == 0, result.output
    assert "Indexed minutes.md" in result.stderr and "2 sentences" in result.stderr
    stored = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "index").glob("gen-*/docs/*"))
    assert "The harbour board met on Tuesday." in stored and "%PDF" not in stored and "endobj" not in stored


# --- chat, eval, settings -------------------------------------------------------------------------


@pytest.mark.slow
def test_chat_reports_a_bad_question_and_goes_on(index_dir):
    result = run("chat", "--index-dir", index_dir, "--no-gate", input="Who\x07 is the mayor?\n\n")
    assert result.exit_code == 0, result.output
    assert "Error: the question contains control characters" in result.stderr


@pytest.mark.slow
def test_chat_without_an_index(tmp_path):
    assert "assistant index" in one_error_line(run("chat", "--index-dir", tmp_path, "--no-gate", input="\n"), 1)


def test_eval_with_a_missing_question_file(tmp_path):
    line = one_error_line(run("eval", "--questions", tmp_path / "none.jsonl", "--out", tmp_path / "out"), 1)
    assert "none.jsonl" in line


def test_eval_and_fit_help():
    for command in ("eval", "fit"):
        result = run(command, "--help")
        assert result.exit_code == 0, result.output
        assert "--questions FILE[:SPLIT]" in result.stdout and "--docs" in result.stdout
        assert "--cache / --no-cache" in result.stdout
    assert "--min-overall" in run("eval", "--help").stdout
    assert "--per-document" in run("fit", "--help").stdout


def test_eval_questions_file_split_that_is_not_there(tmp_path):
    line = one_error_line(run("eval", "--questions", f"{QUESTIONS}:nope", "--out", tmp_path / "out"), 1)
    assert "split 'nope'" in line and "dev, test" in line


def test_fit_with_a_server_model_is_a_usage_error(tmp_path):
    line = one_error_line(run("fit", "--llm-url", "http://127.0.0.1:9/v1", "--out", tmp_path / "fit.json"), 2)
    assert "drop --llm-url" in line


@pytest.mark.slow
def test_fit_writes_a_fitted_file_that_answers(tmp_path, town_index, index_dir):
    """`assistant fit` end to end on two small sets (documents are held out in turn, so it needs two):
    a few dev items of the article and a made-up set about TOWN. Then the file answers."""
    town_set = tmp_path / "town" / "questions.jsonl"
    (town_set.parent / "docs").mkdir(parents=True)
    (town_set.parent / "docs" / "town.txt").write_text(TOWN, encoding="utf-8")
    items = [{"id": f"t{k}", "question": q, "answers": [a], "evidence": "", "kind": "date" if a.isdigit() else "person",
              "doc": "town.txt"} for k, (q, a) in enumerate(TOWN_QUESTIONS)]
    items.append({"id": "tu", "question": "What colour is the old mill?", "answers": [], "evidence": "",
                  "kind": "unanswerable", "doc": "town.txt"})
    town_set.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    out = tmp_path / "fitted.json"
    result = run("fit", "--decoding", "span", "--questions", f"{QUESTIONS}:dev", "--questions", town_set,
                 "--per-document", "4", "--no-cache", "--index-dir", index_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Fitted on 8 questions from 2 documents" in result.stdout and f"Saved {out}" in result.stderr
    settings = Settings()
    from assistant.answering import FEATURES
    from assistant.prompting import load_prompts

    fitted = load_fitted(out, settings.model_path(), load_prompts(settings.prompts_dir).digest, FEATURES)
    assert [d["questions"] for d in fitted.fitted_with.data] == [os.path.relpath(f, PROJECT_ROOT)
                                                                  for f in (QUESTIONS, town_set)]
    assert [d["documents"] for d in fitted.fitted_with.data] == [None, ["town.txt"]]
    assert fitted.measured["questions"] == 8 and 0 <= fitted.gate.threshold < 1  # few questions: maybe no cap met
    (obj,) = json_lines(run("ask", "--json", "--decoding", "span", "--index-dir", town_index, "--fit-file", out,
                            TOWN_QUESTIONS[0][0]))
    if not obj["abstained"]:
        copied = TOWN[obj["answer_span"]["start"] : obj["answer_span"]["end"]]
        assert copied.lower() in obj["answer"].lower() and obj["citations"]


def test_settings_prints_every_setting(tmp_path):
    result = run("settings", "--index-dir", tmp_path / "elsewhere", "--top-k", "7")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert set(Settings.model_fields) <= set(rows)
    assert str(tmp_path / "elsewhere") in rows["index_dir"]
    assert rows["top_k"].split()[1] == "7"


def test_settings_environment_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSISTANT_TOP_K", "9")
    monkeypatch.setenv("ASSISTANT_INDEX_DIR", str(tmp_path / "from-env"))
    result = run("settings")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert rows["top_k"].split()[1] == "9"
    assert str(tmp_path / "from-env") in rows["index_dir"]
    flagged = run("settings", "--top-k", "3")
    assert {line.split()[0]: line for line in flagged.stdout.splitlines()}["top_k"].split()[1] == "3"
    monkeypatch.setenv("ASSISTANT_TOP_K", "zero")
    assert "top_k" in one_error_line(run("settings"), 2)


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "0.1.0" in result.stdout


# --- the installed console script, as a user runs it -----------------------------------------------


def script(*args: str, index_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env["ASSISTANT_INDEX_DIR"] = str(index_dir)
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_script_ask_json(index_dir):
    done = script("ask", "--json", "--no-gate", CEASEFIRE, index_dir=index_dir)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert list(obj) == KEYS
    assert obj["question"] == CEASEFIRE and "thirty-day" in obj["answer"].lower() and obj["citations"]


def test_script_failure_is_one_error_line(tmp_path):
    done = script("index", str(tmp_path / "missing.txt"), index_dir=tmp_path / "index")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "missing.txt" in lines[0]


def test_script_corrupt_pdf_is_one_error_line(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"this is not a pdf")
    done = script("index", str(path), index_dir=tmp_path / "index")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_ask_stops_it(index_dir, signum, code):
    """Even started with SIGINT ignored, as a script's background job is: stopped, no answer, exit 130 or 143."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    child = subprocess.Popen([str(SCRIPT), "ask", "--index-dir", str(index_dir), CEASEFIRE], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(1.5)  # well before the answer (~4 s cold), in the imports and model loading
    child.send_signal(signum)
    out, err = child.communicate(timeout=30)
    assert (child.returncode, out, err) == (code, "", "Interrupted.\n")


HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "gradio")


@pytest.mark.slow
def test_ask_imports_none_of_the_heavy_libraries(index_dir):
    """Answering runs on onnxruntime and numpy: a cold `ask` never pays for torch, scikit-learn or gradio."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    done = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), "ask", "--index-dir", str(index_dir),
                           CEASEFIRE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "thirty-day" in done.stdout.lower(), done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert len(imported) > 100  # the report is there: numpy, onnxruntime, chromadb ...
    assert not imported & set(HEAVY), imported & set(HEAVY)


@pytest.mark.slow
def test_home_that_cannot_be_written_is_not_needed(tmp_path):
    """HOME under a file (nothing can be made there, not even by root): index and ask work, and say nothing more."""
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    doc = tmp_path / "pets.md"
    doc.write_text("Cats sleep sixteen hours a day. Dogs bark at night.", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "XDG_"))}
    env.update(HOME=str(tmp_path / "a-file" / "home"), ASSISTANT_INDEX_DIR=str(tmp_path / "index"))
    for args in (["index", str(doc)], ["ask", "--no-gate", "How long do cats sleep?"]):
        done = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith("Indexed pets.md") if args[0] == "index" else done.stderr == ""
    assert "sixteen hours" in done.stdout


@pytest.mark.parametrize(("command", "closed", "says"), [
    ("chat", 0, "standard input is closed; chat reads the questions from it"),
    ("chat", 1, "standard output is closed; the answers go there"),
    ("ask", 1, "standard output is closed; the answers go there"),
])
def test_a_closed_terminal_stream_is_one_line(tmp_path, command, closed, says):
    args = [str(SCRIPT), command, "--index-dir", str(tmp_path), *(["Who?"] if command == "ask" else [])]
    done = subprocess.run(args, capture_output=closed == 0, stderr=subprocess.PIPE if closed else None,
                          text=True, timeout=60, preexec_fn=lambda: os.close(closed))
    assert (done.returncode, done.stderr) == (1, f"Error: {says}\n")


def test_every_numeric_setting_has_a_finite_documented_range():
    """Each number a user can set is bounded both ways, and its --help says the bounds."""
    numeric = {name: field for name, field in Settings.model_fields.items() if field.annotation in (int, float)}
    assert {"n_ctx", "max_file_mb", "server_timeout", "embed_batch_size", "port"} <= set(numeric)
    shown = " ".join(CliRunner().invoke(main, ["ui", "--help"], terminal_width=400).output.split())
    for name, field in numeric.items():
        assert bounds(field), name
        assert f"ASSISTANT_{name.upper()}; {bounds(field)}" in shown, name
