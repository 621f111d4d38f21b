"""The simulated frontier model's judgement: which label it answers for an input, and how it errs.

Pure logic, no HTTP, so it is unit tested alone. Honest about how LLMs err (DESIGN.md):
- deterministic per input: every draw comes from a hash of (task, normalised input, seed), so a
  repeated input gets the same answer, as a real model at temperature 0 would give;
- errors go to confusable labels: the wrong label is drawn among the few labels most similar to
  the input, weighted by that similarity; the similarity blends the input's to each label's
  centroid (mean TF-IDF vector of its examples) with the gold label's centroid's to each other
  label's, so a label's errors concentrate on its few confusable neighbours
  (card_arrival -> card_delivery_estimate) as a real model's do;
- harder inputs err more: p_err(x) = min(1, k * w(x)) with w(x) = exp(-margin(x) / tau), where the
  margin is the input's similarity to its gold label's centroid minus that to the runner-up's
  (negative where another label's centroid is nearer) and tau is half the margins' spread;
  k is solved once at start by bisection so that the mean p_err over the data set is exactly
  1 - accuracy, and the realised accuracy matches the configured one.

Gold is the data set's label for an input found there (exact match on the normalised input); an
unknown input gets the label of its nearest known example (TF-IDF cosine), which is a guess, and
answers to unknown inputs are kept apart when the realised accuracy is measured.
"""
from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from services.common.normalize import normalise_input
from services.common.tasks import ParseFailure, parse_label
from services.frontier_sim.tfidf import TfidfSpace

DATA_FILES = ("train.csv", "test.csv")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Verdict:
    """One answer of the simulated model, with what it knows about its own correctness."""

    content: str  # the answer text, as the chat completion carries it
    label: str  # the label the model chose (inside `content`, also when malformed)
    gold: str | None  # the data set's label, the nearest example's for an unknown input, None if no overlap
    gold_known: bool  # the input is in the data set, so `gold` is a real label
    wrong: bool
    malformed: bool
    margin: float  # similarity to the gold label's centroid minus the runner-up's; small = hard
    p_err: float


def read_examples(data_dir: Path) -> list[Example]:
    """Every labelled row of train.csv and test.csv (columns text, category) in `data_dir`."""
    paths = [Path(data_dir) / name for name in DATA_FILES if (Path(data_dir) / name).exists()]
    if not paths:
        raise FileNotFoundError(f"{data_dir}: none of {', '.join(DATA_FILES)} is there")
    examples = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            examples.extend(Example(row["text"], row["category"]) for row in csv.DictReader(f))
    return examples


def draw_uniforms(task: str, normalised: str, seed: int, n: int = 4) -> tuple[float, ...]:
    """`n` independent uniforms in [0, 1) that depend only on (task, normalised input, seed)."""
    digest = hashlib.sha256(f"{task}\x00{normalised}\x00{seed}".encode()).digest()
    return tuple(int.from_bytes(digest[8 * i:8 * i + 8], "big") / 2**64 for i in range(n))


def hardness_weights(margins: np.ndarray, tau: float) -> np.ndarray:
    """Relative odds of an error: 1 at margin 0, larger for negative margins, decaying with tau."""
    return np.exp(-np.clip(margins / tau, -50.0, 50.0))


def calibrate_scale(weights: np.ndarray, error_rate: float, iterations: int = 100) -> float:
    """The k for which mean(min(1, k * w)) == error_rate (bisection; the mean grows with k)."""
    if error_rate <= 0.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while np.minimum(1.0, hi * weights).mean() < error_rate:
        hi *= 2.0
        if hi > 1e300:
            break
    for _ in range(iterations):
        mid = (lo + hi) / 2.0
        if np.minimum(1.0, mid * weights).mean() < error_rate:
            lo = mid
        else:
            hi = mid
    return hi


def pick_confusable(similarities: np.ndarray, gold: int, u: float, top: int, temperature: float) -> int:
    """A wrong label among the `top` labels most similar to the input, likelier the more similar."""
    sims = similarities.astype(np.float64, copy=True)
    sims[gold] = -np.inf
    candidates = np.argsort(-sims, kind="stable")[:top]
    odds = np.exp((sims[candidates] - sims[candidates[0]]) / temperature)
    cumulative = np.cumsum(odds / odds.sum())
    return int(candidates[min(int(np.searchsorted(cumulative, u, side="right")), len(candidates) - 1)])


def malform(label: str, u: float, labels: Sequence[str]) -> str:
    """An answer around `label` that a strict parser refuses, as LLMs sometimes write."""
    forms = (
        f"The intent is {label}.",
        label.replace("_", " "),
        f"Label: {label}\nConfidence: high",
        f"{label}_request",
        f"I would classify this as {label}, but it could also be something else.",
    )
    text = forms[int(u * len(forms))]
    try:
        parse_label(text, tuple(labels))
    except ParseFailure:
        return text
    return forms[0]


class ClassificationOracle:
    """Answers a classification task from labelled examples with a set accuracy, erring honestly."""

    def __init__(self, task: str, labels: Sequence[str], examples: Sequence[Example], *, accuracy: float,
                 seed: int = 0, malformed_rate: float = 0.003, confusable_labels: int = 4,
                 label_temperature: float = 0.03, input_weight: float = 0.7, hardness: float = 0.5) -> None:
        if not 0.0 < accuracy <= 1.0:
            raise ValueError(f"accuracy must be in (0, 1], got {accuracy}")
        self.task, self.labels, self.seed = task, tuple(labels), seed
        self.accuracy, self.malformed_rate = accuracy, malformed_rate
        self._top, self._temperature, self._input_weight = confusable_labels, label_temperature, input_weight
        label_index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({e.label for e in examples} - set(label_index))
        if unknown:
            raise ValueError(f"task {task}: the data has labels outside the task's label set: {unknown[:5]}")

        votes: dict[str, Counter] = defaultdict(Counter)
        for e in examples:
            votes[normalise_input(e.text)][e.label] += 1
        self.inputs = list(votes)
        self._index = {text: i for i, text in enumerate(self.inputs)}
        self._gold = np.array([label_index[votes[t].most_common(1)[0][0]] for t in self.inputs])

        self._space = TfidfSpace.fit(self.inputs)
        self._vectors = self._space.transform(self.inputs)
        members = sparse.csr_matrix((np.ones(len(self._gold)), (self._gold, np.arange(len(self._gold)))),
                                    shape=(len(self.labels), len(self._gold)))
        centroids = (members @ self._vectors).toarray()
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        self._centroids = centroids / np.where(norms == 0, 1.0, norms)
        self._similarities = np.asarray(self._vectors @ self._centroids.T)
        self._label_affinity = self._centroids @ self._centroids.T

        self.margins = self._margins(self._similarities, self._gold)
        self._tau = hardness * float(self.margins.std()) or 1.0
        self._scale = calibrate_scale(hardness_weights(self.margins, self._tau), 1.0 - accuracy)
        self.p_err = self._error_probability(self.margins)

    @staticmethod
    def _margins(similarities: np.ndarray, gold: np.ndarray) -> np.ndarray:
        rows = np.arange(len(gold))
        gold_sim = similarities[rows, gold]
        others = similarities.copy()
        others[rows, gold] = -np.inf
        return gold_sim - others.max(axis=1)

    def _error_probability(self, margins: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, self._scale * hardness_weights(margins, self._tau))

    def gold(self, text: str) -> str | None:
        """The data set's label for `text`, or None when it is not there."""
        i = self._index.get(normalise_input(text))
        return None if i is None else self.labels[self._gold[i]]

    def answer(self, text: str) -> Verdict:
        normalised = normalise_input(text)
        u_err, u_label, u_malformed, u_form = draw_uniforms(self.task, normalised, self.seed)
        i = self._index.get(normalised)
        if i is not None:
            gold, sims, known = int(self._gold[i]), self._similarities[i], True
            margin, p_err = float(self.margins[i]), float(self.p_err[i])
        else:
            vector = self._space.transform([normalised])
            if vector.nnz == 0:  # nothing in common with the data: an arbitrary (but stable) label
                label = self.labels[int(u_label * len(self.labels))]
                return self._verdict(label, None, False, False, -np.inf, 1.0, u_malformed, u_form)
            gold = int(self._gold[int(np.asarray((self._vectors @ vector.T).todense()).ravel().argmax())])
            sims = np.asarray(vector @ self._centroids.T).ravel()
            margin = float(self._margins(sims[None, :], np.array([gold]))[0])
            p_err = float(self._error_probability(np.array([margin]))[0])
            known = False
        wrong = u_err < p_err
        chosen = self._confuse(sims, gold, u_label) if wrong else gold
        return self._verdict(self.labels[chosen], self.labels[gold], known, wrong, margin, p_err, u_malformed, u_form)

    def _confuse(self, sims: np.ndarray, gold: int, u: float) -> int:
        blended = self._input_weight * sims + (1.0 - self._input_weight) * self._label_affinity[gold]
        return pick_confusable(blended, gold, u, self._top, self._temperature)

    def _verdict(self, label: str, gold: str | None, known: bool, wrong: bool, margin: float, p_err: float,
                 u_malformed: float, u_form: float) -> Verdict:
        malformed = u_malformed < self.malformed_rate
        content = malform(label, u_form, self.labels) if malformed else label
        return Verdict(content, label, gold, known, wrong, malformed, margin, p_err)
