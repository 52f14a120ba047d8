"""The reader's training examples: SQuAD's answered questions, and questions a passage does not answer.

SQuAD 1.1 has no unanswerable questions, so "no answer" is taught four ways: the real ones of
SQuAD 2.0 and of a question set's fitting articles; a question paired with the passage of its
article that shares most words with it but does not hold the answer (what retrieval hands the
reader when it misses); the question with a name, number or year swapped for another of the same
kind from the article that its passage never mentions; and the question negated. Every choice is
drawn from one seeded generator, so the same arguments give the same examples.
"""

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import AssistantError

_WORD = re.compile(r"\w+")
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][\w'’-]*(?:\s+(?:of\s+|the\s+|de\s+)?[A-Z][\w'’-]*)*")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_YEAR = re.compile(r"\b1\d{3}\b|\b20\d{2}\b")
_AUXILIARY = re.compile(r"\b(is|was|are|were|did|does|do|can|could|has|have|had|will|would|should)\b(?! not\b)")
_NEGATED = re.compile(r"\b(not|never|no)\b|n't\b", re.I)


@dataclass(frozen=True)
class Example:
    question: str
    context: str
    answer_start: int | None  # None: the context does not answer the question
    answer: str
    kind: str  # squad, unanswerable, other-passage, swapped, negated
    article: str


@dataclass(frozen=True)
class Article:
    title: str
    paragraphs: tuple[str, ...]
    questions: tuple[tuple[int, str, str, int | None], ...]  # paragraph, question, answer, start (None: none)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_squad(path: Path, unanswerable_only: bool = False) -> list[Article]:
    """SQuAD JSON -> articles; with `unanswerable_only`, the questions without an answer alone."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise AssistantError(f"no training set at {path}") from None
    except (OSError, ValueError, KeyError) as e:
        raise AssistantError(f"{path} is not SQuAD JSON ({e})") from None
    articles = []
    for entry in data:
        paragraphs, questions = [], []
        for n, p in enumerate(entry["paragraphs"]):
            paragraphs.append(p["context"])
            for q in p["qas"]:
                impossible = q.get("is_impossible", False) or not q["answers"]
                if unanswerable_only and not impossible:
                    continue
                if impossible:
                    questions.append((n, q["question"], "", None))
                else:
                    a = q["answers"][0]
                    questions.append((n, q["question"], a["text"], a["answer_start"]))
        articles.append(Article(entry["title"], tuple(paragraphs), tuple(questions)))
    return articles


def read_question_set(questions: Path, docs: Path, titles: set[str]) -> list[Article]:
    """A squad-dev style set (whole documents, an evidence sentence per answered question) as
    articles of paragraphs; an unanswered question goes with the paragraph holding the look-alike
    answer it was written around, else the one sharing most of its words."""
    rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    articles = []
    for title in sorted(titles):
        paragraphs = tuple(p for p in (docs / title).read_text(encoding="utf-8").split("\n\n") if p.strip())
        found: list[tuple[int, str, str, int | None]] = []
        for row in (r for r in rows if r["doc"] == title):
            if row["kind"] == "answerable":
                n = next((i for i, p in enumerate(paragraphs) if row["evidence"] in p), None)
                if n is None:
                    continue
                at = paragraphs[n].find(row["answers"][0], paragraphs[n].find(row["evidence"]))
                if at >= 0:
                    found.append((n, row["question"], row["answers"][0], at))
            else:
                plausible = [p for p in row.get("plausible_answers") or [] if p]
                n = next((i for i, p in enumerate(paragraphs) if plausible and plausible[0] in p),
                         closest(row["question"], paragraphs))
                found.append((n, row["question"], "", None))
        articles.append(Article(title, paragraphs, tuple(found)))
    return articles


def closest(question: str, paragraphs: tuple[str, ...], skip: int = -1) -> int:
    """The paragraph sharing the most words with the question (other than `skip`)."""
    wanted = set(_WORD.findall(question.lower()))
    shared = [(len(wanted & set(_WORD.findall(p.lower()))), -i) for i, p in enumerate(paragraphs) if i != skip]
    return -max(shared)[1]


def answered(articles: list[Article]) -> Iterator[Example]:
    for a in articles:
        for n, question, answer, start in a.questions:
            context = a.paragraphs[n]
            if start is None:
                yield Example(question, context, None, "", "unanswerable", a.title)
            elif context[start : start + len(answer)] == answer:
                yield Example(question, context, start, answer, "squad", a.title)


def other_passage(example: Example, article: Article) -> Example | None:
    """The question with its article's most similar passage that does not hold the answer."""
    others = tuple(p for p in article.paragraphs if example.answer.lower() not in p.lower() and p != example.context)
    if not others:
        return None
    return Example(example.question, others[closest(example.question, others)], None, "", "other-passage",
                   article.title)


def swapped(example: Example, article: Article, rng: random.Random) -> Example | None:
    """The question with a name, number or year of its passage swapped for one of the article's
    that the passage never mentions: the passage no longer answers it."""
    text = " ".join(article.paragraphs)
    for pattern in rng.sample([_YEAR, _NUMBER, _NAME], 3):
        mine = [m for m in pattern.finditer(example.question) if m.group() in example.context]
        pool = sorted({m.group() for m in pattern.finditer(text)}
                      - {m.group() for m in pattern.finditer(example.context)})
        pool = [p for p in pool if p not in example.question]
        if mine and pool:
            m = rng.choice(mine)
            question = example.question[: m.start()] + rng.choice(pool) + example.question[m.end():]
            return Example(question, example.context, None, "", "swapped", article.title)
    return None


def negated(example: Example) -> Example | None:
    """'Who was the first king?' -> 'Who was not the first king?'; 'What did Anne do?' -> 'What did Anne not do?'."""
    if _NEGATED.search(example.question):
        return None
    m = _AUXILIARY.search(example.question, 1)
    if m is None:
        return None
    at = m.end()
    subject = re.match(r"\s+(?:(?:the|a|an|his|her|its|their)\s+[\w'’-]+|[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)*|[\w'’-]+)",
                       example.question[at:])
    if m.group() in ("do", "does", "did") and subject:  # 'What did Beyonce do?' -> 'What did Beyonce not do?'
        at += subject.end()
    question = example.question[:at] + " not" + example.question[at:]
    return Example(question, example.context, None, "", "negated", example.article)
