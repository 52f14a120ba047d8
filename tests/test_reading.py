"""The reader: exact character spans, its windows, the shipped model and its card, a made-up
document it was never trained on, and training itself on a tiny made-up set."""

import assistant  # noqa: F401  (first: sets the offline variables)

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from assistant.abstention import NOT_IN_DOCUMENT
from assistant.answering import Assistant
from assistant.errors import AssistantError
from assistant.reading import MAX_TOKENS, NO_OFFSET, READER_FILE, Reader, Tokenizer, collect
from assistant.settings import Settings
from assistant.spans import Span
from conftest import SCRIPT

TOKENIZER = Settings().embedding_path() / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(TOKENIZER)


def pointing_at(tokenizer: Tokenizer, passage: Span, word: str) -> Span:
    """The span `collect` returns when the start and end logits point at the tokens of `word`."""
    pieces = tokenizer.pieces("Which word?", [passage.text])
    piece = pieces[0]
    at = passage.text.index(word)
    tokens = [i for i, (a, b) in enumerate(piece.offsets) if (a, b) != NO_OFFSET and a < at + len(word) and b > at]
    start, end = np.zeros((1, len(piece.ids))), np.zeros((1, len(piece.ids)))
    start[0, tokens[0]] = end[0, tokens[-1]] = 20.0
    return collect(pieces, start, end, [passage], 1).found[0].span


@pytest.mark.parametrize("word", ["Müller", "Zoë", "東京", "supercalifragilisticexpialidocious", "São Paulo",
                                  "naïve café", "2,500"])
def test_spans_are_exact_characters_of_the_document(tokenizer, word):
    document = ("Intro line.\n\nThe naïve café of Zoë Müller opened in São Paulo, then 東京, selling "
                "supercalifragilisticexpialidocious cakes to 2,500 guests.")
    at = document.index("The")
    passage = Span("doc.txt", at, len(document), document[at:])
    span = pointing_at(tokenizer, passage, word)
    assert span.text == word
    assert document[span.start : span.end] == word


def test_a_long_passage_is_read_in_overlapping_windows(tokenizer):
    text = " ".join(f"Sentence {i} names the river Alder{i} and its town." for i in range(200))
    pieces = tokenizer.pieces("Which river?", [text])
    assert len(pieces) > 2
    assert all(len(p.ids) <= MAX_TOKENS for p in pieces)
    spans = [[o for o in p.offsets if o != NO_OFFSET] for p in pieces]
    for before, after in zip(spans, spans[1:]):
        assert after[0][0] < before[-1][1]  # windows share text: an answer on a boundary is whole in one
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(text)


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


def test_the_shipped_reader_reads_a_made_up_passage(reader):
    text = ("The lighthouse at Corran Point was built in 1871 by the engineer Margaret Idle. "
            "Its lamp burns paraffin and can be seen for nineteen miles.")
    reading = reader.read("Who built the lighthouse at Corran Point?", [Span("notes.txt", 10, 10 + len(text), text)])
    best = reading.found[0]
    assert best.span.text == "Margaret Idle"
    assert (best.span.start, best.span.end) == (10 + text.index("Margaret"), 10 + text.index(" Its") - 1)
    assert reading.margin > 0
    assert [f.score for f in reading.found] == sorted((f.score for f in reading.found), reverse=True)


def test_the_reader_sees_no_answer_in_a_passage_about_something_else(reader):
    text = ("The lighthouse at Corran Point was built in 1871 by the engineer Margaret Idle. "
            "Its lamp burns paraffin and can be seen for nineteen miles.")
    reading = reader.read("What is the population of Corran Point?", [Span("notes.txt", 0, len(text), text)])
    assert reading.margin < 0


@pytest.fixture(scope="module")
def town_reader(town_index) -> Assistant:
    return Assistant(Settings(index_dir=town_index))


@pytest.mark.parametrize(("question", "expected"), [
    ("Who is the council's spokesperson?", "Harriet Vance"),
    ("How much did the new stone bridge cost?", "nine million pounds"),
])
def test_answers_a_made_up_document(town_reader, question, expected):
    answer = town_reader.ask(question)
    assert not answer.abstained
    assert expected.lower() in answer.answer.lower()
    assert answer.answer_span is not None and answer.answer_span.text.lower() in answer.answer.lower()
    assert any(c.overlaps(answer.answer_span) for c in answer.citations)


@pytest.mark.parametrize("question", [
    "What is the name of the town's football club?",
    "What colour is the mayor's car?",
])
def test_no_answer_in_a_made_up_document(town_reader, question):
    answer = town_reader.ask(question)
    assert answer.abstained and answer.answer == NOT_IN_DOCUMENT
    assert answer.citations == ()


@pytest.fixture()
def changed_reader(tmp_path) -> Path:
    target = tmp_path / "reader.onnx"
    shutil.copy(READER_FILE, target)
    shutil.copy(READER_FILE.with_suffix(".json"), target.with_suffix(".json"))
    with target.open("r+b") as f:  # one byte of the weights, the file's size unchanged
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))
    return target


def test_a_changed_reader_file_is_refused(changed_reader):
    with pytest.raises(AssistantError, match="is not the reader its card describes"):
        Reader(changed_reader)


def test_a_changed_reader_file_is_one_error_line(changed_reader, town_index):
    done = subprocess.run([str(SCRIPT), "ask", "Who runs the bakery?", "--index-dir", str(town_index),
                           "--reader-model", str(changed_reader)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1
    assert "is not the reader its card describes" in done.stderr


def test_a_reader_without_its_card_is_refused(tmp_path):
    lone = tmp_path / "reader.onnx"
    shutil.copy(READER_FILE, lone)
    with pytest.raises(AssistantError, match="no reader card"):
        Reader(lone)


def test_the_card_says_what_made_the_reader(reader):
    card = reader.card
    assert {"onnx_sha256", "base_encoder", "tokenizer_sha256", "data", "recipe", "steps", "held_out", "command",
            "licence"} <= set(card)
    assert all(len(d["sha256"]) == 64 for d in card["data"])
    assert "CC BY-SA 4.0" in card["licence"]
    assert READER_FILE.stat().st_size <= 30e6


def made_up_articles(n: int) -> list[tuple[str, list[str], list[tuple[int, str, str]]]]:
    """`n` made-up towns, each with two paragraphs and four questions: nothing from a real data set."""
    first, second = ["Vel", "Bran", "Quil", "Dun", "Ors", "Tam", "Hel", "Kor"], ["mora", "nock", "lan", "wick", "by"]
    people = ["Ilse Korran", "Tomas Rell", "Ada Fenn", "Piet Ulm", "Nora Skye", "Lev Amsel"]
    goods = ["blue cheese", "rope", "glass beads", "salt fish", "wool"]
    articles = []
    for i in range(n):
        town, mayor, good = first[i % 8] + second[i // 8 % 5], people[i % 6], goods[i % 5]
        year, count = 1950 + i, ["forty", "sixty", "eighty"][i % 3]
        paragraphs = [f"{town} is a harbour town. Its mayor is {mayor}, elected in {year}.",
                      f"{town} is known for {good}. The school of {town} has {count} pupils."]
        articles.append((town, paragraphs, [
            (0, f"Who is the mayor of {town}?", mayor), (0, f"When was the mayor of {town} elected?", str(year)),
            (1, f"What is {town} known for?", good), (1, "How many pupils does the school have?", count)]))
    return articles


def squad_json(path: Path, impossible: bool = False) -> Path:
    data = []
    for title, paragraphs, questions in made_up_articles(30):
        entry = {"title": title, "paragraphs": [{"context": p, "qas": []} for p in paragraphs]}
        for n, (p, question, answer) in enumerate(questions):
            qa = {"question": question, "id": f"{title}-{n}", "answers": [
                {"text": answer, "answer_start": paragraphs[p].index(answer)}]}
            if impossible:
                qa = {"question": question.replace("?", " in 1700?"), "id": f"{title}-{n}", "answers": [],
                      "is_impossible": True}
            entry["paragraphs"][p]["qas"].append(qa)
        data.append(entry)
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


@pytest.mark.slow
def test_training_lowers_the_loss_and_exports_a_reader_that_runs(tmp_path):
    from assistant.tools import reader_training as rt

    sources = rt.Sources(squad_json(tmp_path / "train.json"), squad_json(tmp_path / "none.json", impossible=True),
                         None, None, ())
    recipe = rt.Recipe(positives=1000, batch=8, lr=3e-4, warmup=0.1, held_out_articles=2, unanswerable_repeats=1)
    run = rt.Run(tmp_path / "run", Settings().embedding_path(), sources, recipe, max_minutes=5, eval_every=10)
    state = rt.train(run, lambda *_: None)
    assert state["step"] == state["total"] > 10
    assert state["loss"] < 0.7 * state["first_loss"]
    assert state["scores"] and 0 <= state["scores"][-1]["f1"] <= 1
    card = rt.export(run, tmp_path / "out" / "reader.onnx", "test")
    assert card["steps"] == state["step"] and card["int8"]
    reading = Reader(tmp_path / "out" / "reader.onnx").read("Who is the mayor of Velmora?",
                                                            [Span("a", 0, 29, "Velmora's mayor: Ilse Korran.")])
    assert reading.found and all(f.span.text for f in reading.found)


@pytest.mark.slow
def test_training_resumes_only_under_the_same_recipe(tmp_path):
    from assistant.tools import reader_training as rt

    sources = rt.Sources(squad_json(tmp_path / "train.json"), squad_json(tmp_path / "none.json", impossible=True),
                         None, None, ())
    recipe = rt.Recipe(positives=16, batch=8, held_out_articles=2, unanswerable_repeats=0)
    run = rt.Run(tmp_path / "run", Settings().embedding_path(), sources, recipe, max_minutes=0.001, eval_every=1000)
    first = rt.train(run, lambda *_: None)
    assert 0 < first["step"] < first["total"]  # the budget ran out: a checkpoint to go on from
    again = rt.train(rt.Run(run.out, run.base, sources, recipe, 5, 1000), lambda *_: None)
    assert again["step"] == again["total"]
    with pytest.raises(AssistantError, match="another recipe"):
        rt.train(rt.Run(run.out, run.base, sources, rt.Recipe(positives=17, batch=8, held_out_articles=2), 5, 1000),
                 lambda *_: None)


@pytest.mark.slow
def test_a_second_stage_starts_from_the_first_and_says_so(tmp_path):
    from assistant.tools import reader_training as rt

    sources = rt.Sources(squad_json(tmp_path / "train.json"), squad_json(tmp_path / "none.json", impossible=True),
                         None, None, ())
    recipe = rt.Recipe(positives=16, batch=8, held_out_articles=2, unanswerable_repeats=0)
    first = rt.Run(tmp_path / "first", Settings().embedding_path(), sources, recipe, 5, 1000)
    done = rt.train(first, lambda *_: None)
    second = rt.Run(tmp_path / "second", first.base, sources, rt.Recipe(positives=8, batch=8, held_out_articles=2,
                                                                        unanswerable_repeats=1, lr=5e-5),
                    5, 1000, init=first.out / "checkpoint.pt")
    state = rt.train(second, lambda *_: None)
    assert state["init_from"]["steps"] == done["step"] and state["init_from"]["recipe"]["positives"] == 16
    card = rt.export(second, tmp_path / "out" / "reader.onnx", "test")
    assert card["init_from"]["checkpoint_sha256"] and card["recipe"]["lr"] == 5e-5
    with pytest.raises(AssistantError, match="cannot read the checkpoint"):
        rt.train(rt.Run(tmp_path / "third", first.base, sources, recipe, 5, 1000, init=tmp_path / "none.pt"),
                 lambda *_: None)


def test_made_negatives():
    from assistant.tools.reader_data import Article, Example, negated, other_passage, swapped

    article = Article("Velmora", ("Velmora's mayor is Ilse Korran, elected in 2016.",
                                  "The ferry to Dunmoor left in 1999 with Tomas Rell aboard."), ())
    asked = Example("When was Ilse Korran elected?", article.paragraphs[0], article.paragraphs[0].index("2016"),
                    "2016", "squad", "Velmora")
    other = other_passage(asked, article)
    assert other is not None and other.context == article.paragraphs[1] and other.answer_start is None
    import random

    changed = swapped(asked, article, random.Random(0))
    assert changed is not None and changed.answer_start is None and changed.question != asked.question
    assert "Tomas Rell" in changed.question or "Dunmoor" in changed.question or "1999" in changed.question
    assert negated(asked).question == "When was not Ilse Korran elected?"
    did = Example("What did Ilse Korran do in 2016?", "", None, "", "squad", "")
    assert negated(did).question == "What did Ilse Korran not do in 2016?"
    assert negated(Example("Why did the ferry not sail?", "", None, "", "squad", "")) is None
