"""Word-level helpers shared by evidence selection, answer extraction and abstention.

English only; stems with PyStemmer (shipped with bm25s). Does not know any document.
"""

import json
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom whose why will
    with would you your yours yourself yourselves according said say says tell told article text document
    one ones did does done get got make made many much""".split()
)
_WORD = re.compile(r"[^\W_]+(?:[’'][^\W_]+)*")


@lru_cache(maxsize=1)
def vocabulary() -> dict:
    """assistant/vocab/answer_types.json: question phrasings, answer-kind nouns, number and date words."""
    return json.loads((Path(__file__).resolve().parent / "vocab" / "answer_types.json").read_text(encoding="utf-8"))


def words(text: str) -> list[str]:
    """'Russia’s 30-day plan' -> ['russia’s', '30', 'day', 'plan']"""
    return [w.lower() for w in _WORD.findall(text)]


@lru_cache(maxsize=1)
def stemmer() -> Any:
    """The one English stemmer (PyStemmer), for these helpers and keyword search alike."""
    import Stemmer

    return Stemmer.Stemmer("english")


def stem(word: str) -> str:
    return stemmer().stemWord(re.sub(r"[’']s$", "", word))


def content_stems(text: str) -> set[str]:
    """Stems of the words that carry meaning: 'How many troops were sent?' -> {'troop', 'sent'}"""
    return {stem(w) for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())}


def has_number(text: str) -> bool:
    numbers = set(vocabulary()["number_words"])
    return any(w in numbers or re.match(r"\d", w) for w in words(text))


def has_date(text: str) -> bool:
    dates = set(vocabulary()["date_words"])
    return any(w in dates or re.fullmatch(r"1\d\d\d|20\d\d|\d{1,2}(st|nd|rd|th)|\d{3,4}s", w) for w in words(text))


def word_weights(sentences: list[str]) -> dict[str, float]:
    """Inverse sentence frequency of each content word of a document's sentences: the rarer, the
    more a question that uses it depends on it."""
    found = [content_stems(x) for x in sentences]
    counts = Counter(w for words_of in found for w in words_of)
    return {w: math.log((1 + len(found)) / (1 + n)) + 1 for w, n in counts.items()}
