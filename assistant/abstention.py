"""Decide whether the document answers the question, from signals measured in code.

No single signal separates answerable from unanswerable questions, so a logistic gate combines
them. Its weights are fitted on the eval suite's dev split (`assistant eval --calibrate`) and kept
in a JSON file; the model's own opinion is only one input. Does not produce answers.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from assistant.errors import AssistantError

NOT_IN_DOCUMENT = "The document does not say."
FEATURES = ("cosine", "coverage", "margin", "span_logprob", "typed")


@dataclass(frozen=True)
class Signals:
    cosine: float  # question vs. best evidence sentence
    coverage: float  # share of the question's content words in that sentence
    margin: float  # best evidence score minus the runner-up's
    span_logprob: float | None  # mean per-token log-probability of the answer (with end of turn);
    # None when a server model does not report log-probabilities: the gate then counts it as average
    typed: float  # 1 when a span of the asked-for kind (number, date, name) exists

    def vector(self) -> np.ndarray:
        """The signals in FEATURES order, NaN for one not measured."""
        return np.array([getattr(self, f) for f in FEATURES], dtype=np.float64)


@dataclass(frozen=True)
class Gate:
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = 0.5

    def p_answerable(self, signals: Signals) -> float:
        z = np.nan_to_num((signals.vector() - np.array(self.mean)) / np.array(self.scale))
        return 1.0 / (1.0 + math.exp(-(float(np.dot(self.weights, z)) + self.bias)))


def load_gate(path: Path) -> Gate:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if tuple(data["features"]) != FEATURES:
            raise ValueError("features differ")
        return Gate(tuple(data["weights"]), data["bias"], tuple(data["mean"]), tuple(data["scale"]), data["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AssistantError(f"cannot read the abstention gate {path} ({e}); run 'assistant eval --calibrate'") from None


def save_gate(gate: Gate, path: Path) -> None:
    path.write_text(json.dumps({"features": FEATURES, **asdict(gate)}, indent=2) + "\n", encoding="utf-8")


def fit_gate(signals: list[Signals], answerable: list[bool], max_false_abstention: float = 0.05) -> Gate:
    """Logistic regression (L2, gradient descent) on standardised signals. The threshold is the
    highest that keeps false abstention within the limit on leave-one-out probabilities: each
    item scored by a gate fitted without it, since in-sample scores put the threshold too high."""
    x = np.array([s.vector() for s in signals])
    y = np.array(answerable, dtype=np.float64)
    mean, scale = np.nan_to_num(np.nanmean(x, axis=0)), np.nan_to_num(np.nanstd(x, axis=0)) + 1e-9
    z = np.nan_to_num((x - mean) / scale)
    w, b = _logistic(z, y)
    held_out = np.array([_held_out(z, y, i) for i in range(len(y))])
    positives = np.sort(held_out[y == 1])
    allowed = int(math.floor(max_false_abstention * len(positives)))
    threshold = float(positives[allowed] - 1e-6) if len(positives) else 0.5
    return Gate(tuple(w.tolist()), b, tuple(mean.tolist()), tuple(scale.tolist()), threshold)


def _logistic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(5000):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w -= 0.1 * (z.T @ (p - y) / len(y) + 0.01 * w)
        b -= 0.1 * float(np.mean(p - y))
    return w, b


def _held_out(z: np.ndarray, y: np.ndarray, i: int) -> float:
    keep = np.arange(len(y)) != i
    w, b = _logistic(z[keep], y[keep])
    return float(1 / (1 + np.exp(-(z[i] @ w + b))))
