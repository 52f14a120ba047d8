"""Build the chat messages for the model from the prompt files in settings.prompts_dir.

Pure apart from reading those files. Does not call the model. Files:
  system.txt      the instructions
  question.txt    the user turn, with $evidence and $question
  examples.jsonl  few-shot turns (passage, question, answer) about a made-up text
  content_free.txt  a question that asks nothing in particular: how likely a span is whatever was asked
"""

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import AssistantError
from assistant.loading import read_bounded


@dataclass(frozen=True)
class PromptSet:
    system: str
    question: string.Template
    examples: tuple[tuple[str, str, str], ...]
    content_free: str
    digest: str  # SHA-256 of the files: what a fitted ranker was fitted with


MAX_PROMPT_BYTES = 1_000_000  # prompts are a few kB; a prompt near this would not fit any context
FILES = ("system.txt", "question.txt", "examples.jsonl", "content_free.txt")


def load_prompts(folder: Path) -> PromptSet:
    texts = {name: _read(folder, name) for name in FILES}
    return PromptSet(
        system=texts["system.txt"].strip(),
        question=string.Template(texts["question.txt"].strip()),
        examples=tuple(_example(line, folder) for line in texts["examples.jsonl"].splitlines() if line.strip()),
        content_free=texts["content_free.txt"].strip(),
        digest=hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest(),
    )


def _read(folder: Path, name: str) -> str:
    path = folder / name
    if not path.exists():
        raise AssistantError(f"prompt file {name!r} not found in {folder}/")
    try:
        return read_bounded(path, MAX_PROMPT_BYTES, "the prompt file ").decode("utf-8")
    except UnicodeDecodeError as e:
        raise AssistantError(f"the prompt file {path} is not UTF-8 text (bad byte at offset {e.start})") from None


def _example(line: str, folder: Path) -> tuple[str, str, str]:
    try:
        item = json.loads(line)
        return item["passage"], item["question"], item["answer"]
    except (ValueError, KeyError, TypeError):
        raise AssistantError(f"bad line in {folder}/examples.jsonl: each needs passage, question, answer") from None


def user_turn(prompts: PromptSet, evidence: str, question: str) -> str:
    try:
        return prompts.question.substitute(evidence=evidence, question=question)
    except (KeyError, ValueError) as e:
        raise AssistantError(f"question.txt uses an unknown variable {e}; use $evidence and $question") from None


def messages(prompts: PromptSet, evidence: str, question: str) -> list[dict[str, str]]:
    """System turn, the few-shot turns, then the question over its evidence."""
    turns = [{"role": "system", "content": prompts.system}]
    for passage, asked, answer in prompts.examples:
        turns.append({"role": "user", "content": user_turn(prompts, passage, asked)})
        turns.append({"role": "assistant", "content": answer})
    turns.append({"role": "user", "content": user_turn(prompts, evidence, question)})
    return turns
