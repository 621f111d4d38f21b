"""The simulated frontier model's judgement on an extraction task: which fields it answers, and how it errs.

Pure logic, no HTTP, unit tested alone; the extraction twin of `oracle.ClassificationOracle`.
Gold comes from a span-labelled data set (Restaurant-8k: character spans of people, time,
date, first_name, last_name). Honest about how LLMs err at slot filling:
- deterministic per input: every draw is a hash of (task, field, normalised input, seed);
- each field has its own configured error rate, measured where the field is present in the
  gold: p_err(x, f) = min(1, k_f * w(x, f)), k_f solved by bisection so the mean over the data set
  is exactly the configured rate;
- harder inputs err more: w grows when the input is a bare answer to a question the model does
  not see (Restaurant-8k's `requestedSlots`: "13" answering "what time?"), with the span's
  length in words and with the number of fields the input carries;
- the errors are the ones LLMs make: a value put in the confusable field ("Smith" as first_name,
  a bare "7" as people instead of time), a boundary off by a word ("8pm for" / "quarter to"),
  or a field left out; a value is never invented from nothing;
- a configured share of answers is malformed JSON (fenced, prose around it, single quotes,
  trailing comma, cut off), which a strict parser refuses: a parse failure, never a label.

An input not in the data set gets a plain pattern-based reading (ungraded, kept apart in the
realised figures); the answer is always a JSON object with every field, null where absent.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.common.normalize import normalise_input
from services.common.tasks import ParseFailure, FieldSpec, parse_fields
from services.frontier_sim.oracle import calibrate_scale, draw_uniforms

SPAN_FILES = ("train_0.json", "test.json")
BARE_SHARE = 0.8  # a span covering this much of the input answers a question the model cannot see
CONFUSABLE = {"first_name": "last_name", "last_name": "first_name", "people": "time", "time": "people"}
ERROR_KINDS = ("confuse", "boundary", "miss")
KIND_WEIGHTS = {"confuse": 0.45, "boundary": 0.35, "miss": 0.2}
_WORD = re.compile(r"\S+")
_DIGITS = re.compile(r"^\W*\d+\W*$")

Span = tuple[int, int]


@dataclass(frozen=True)
class SpanExample:
    """One utterance with its gold spans (end exclusive, surrounding whitespace trimmed)."""

    text: str
    spans: Mapping[str, Span]
    requested: tuple[str, ...] = ()

    def values(self, fields: Sequence[str]) -> dict[str, str | None]:
        return {f: (self.text[self.spans[f][0]:self.spans[f][1]] if f in self.spans else None) for f in fields}


def trim_span(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def read_span_examples(data_dir: Path, files: Sequence[str] = SPAN_FILES) -> list[SpanExample]:
    """Every utterance of the Restaurant-8k files in `data_dir` (a missing startIndex means 0)."""
    paths = [Path(data_dir) / name for name in files if (Path(data_dir) / name).exists()]
    if not paths:
        raise FileNotFoundError(f"{data_dir}: none of {', '.join(files)} is there")
    return [example for path in paths for example in read_span_file(path)]


def read_span_file(path: Path) -> list[SpanExample]:
    examples = []
    for row in json.loads(Path(path).read_text(encoding="utf-8")):
        text = row["userInput"]["text"]
        spans = {}
        for label in row.get("labels", []):
            span = label["valueSpan"]
            start, end = trim_span(text, int(span.get("startIndex", 0)), int(span["endIndex"]))
            if end > start:
                spans[label["slot"]] = (start, end)
        examples.append(SpanExample(text, spans, tuple((row.get("context") or {}).get("requestedSlots", ()))))
    return examples


def fields_json(values: Mapping[str, str | None], fields: Sequence[str]) -> str:
    """The answer as the task's canonical JSON (the form `parse_fields` returns)."""
    return json.dumps({f: values.get(f) for f in fields}, sort_keys=True)


def hardness(example: SpanExample, f: str) -> float:
    """log-odds bump of an error on field `f` of `example` (0 = an easy input)."""
    start, end = example.spans[f]
    bare = bool(example.requested) and (end - start) >= BARE_SHARE * len(example.text.strip())
    words = len(example.text[start:end].split())
    return 1.5 * bare + 0.5 * min(words - 1, 3) + 0.5 * (len(example.spans) - 1)


def words_of(text: str) -> list[Span]:
    return [m.span() for m in _WORD.finditer(text)]


def shift_boundary(text: str, span: Span, u: float) -> Span | None:
    """The span one word longer (right, else left) or one word shorter; None if neither is possible."""
    start, end = span
    words = words_of(text)
    after = [w for w in words if w[0] >= end]
    before = [w for w in words if w[1] <= start]
    inside = [w for w in words if w[0] >= start and w[1] <= end]
    options = []
    if after:
        options.append((start, after[0][1]))
    if before:
        options.append((before[-1][0], end))
    if len(inside) >= 2:
        options.append((start, inside[-2][1]))
    if not options:
        return None
    return trim_span(text, *options[min(int(u * len(options)), len(options) - 1)])


def confusable_target(example: SpanExample, f: str) -> str | None:
    """The field a value of `f` is likely misfiled under, when that field is absent from the gold."""
    target = CONFUSABLE.get(f)
    if target is None or target in example.spans:
        return None
    if f in ("people", "time"):
        start, end = example.spans[f]
        if not _DIGITS.match(example.text[start:end]):
            return None  # "7pm" is never a party size; a bare "7" can be either
    return target


def pick_kind(options: Sequence[str], u: float) -> str:
    weights = np.array([KIND_WEIGHTS[k] for k in options])
    cumulative = np.cumsum(weights / weights.sum())
    return options[min(int(np.searchsorted(cumulative, u, side="right")), len(options) - 1)]


def malform_json(values: Mapping[str, str | None], fields: Sequence[FieldSpec], u: float) -> str:
    """An answer around `values` that a strict JSON parser refuses, as LLMs sometimes write."""
    names = [f.name for f in fields]
    body = json.dumps({f: values.get(f) for f in names})
    forms = (
        f"```json\n{body}\n```",
        f"Here are the booking details: {body}",
        repr({f: values.get(f) for f in names}),
        body[:-1].rstrip() + ", }",
        body[:max(1, len(body) // 2)],
    )
    text = forms[min(int(u * len(forms)), len(forms) - 1)]
    try:
        parse_fields(text, tuple(fields))
    except ParseFailure:
        return text
    return forms[0]


@dataclass(frozen=True)
class FieldsVerdict:
    """One answer of the simulated model on an extraction task, with what it knows about it."""

    content: str  # the answer text, as the chat completion carries it
    values: dict[str, str | None]  # the fields it answered (inside `content`, also when malformed)
    gold: dict[str, str | None] | None  # the data set's fields; None for an unknown input
    gold_known: bool
    wrong_fields: tuple[str, ...]  # fields whose value differs from the gold
    error_kinds: dict[str, str] = field(default_factory=dict)  # field -> confuse | boundary | miss
    malformed: bool = False

    @property
    def wrong(self) -> bool:
        return bool(self.wrong_fields)


# Patterns for inputs outside the data set: a plain reading, never graded.
_NUMBER = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
PATTERNS = {
    "people": re.compile(rf"\b{_NUMBER}\s+(?:people|persons|guests|adults|of us)\b", re.I),
    "time": re.compile(r"\b\d{1,2}(?:[:.]\d{2})?\s*(?:am|pm)\b|\b\d{1,2}:\d{2}\b|\bnoon\b|\bmidnight\b", re.I),
    "date": re.compile(r"\b(?:today|tonight|tomorrow|(?:next\s+)?(?:mon|tues|wednes|thurs|fri|satur|sun)day)\b"
                       r"|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?\b"
                       r"|\b\d{1,2}(?:st|nd|rd|th)\b", re.I),
}
NAME = re.compile(r"\b(?:name is|under|for)\s+([A-Z][a-z]+)(?:\s+([A-Z][a-z]+))?")


def read_by_patterns(text: str, fields: Sequence[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {f: None for f in fields}
    for f, pattern in PATTERNS.items():
        match = pattern.search(text)
        if f in values and match:
            values[f] = match.group(0)
    name = NAME.search(text)
    if name:
        first, last = name.group(1), name.group(2)
        if last is None and "last_name" in values:
            values["last_name"] = first
        else:
            if "first_name" in values:
                values["first_name"] = first
            if "last_name" in values:
                values["last_name"] = last
    return values


class ExtractionOracle:
    """Answers an extraction task from span-labelled examples with set per-field error rates."""

    def __init__(self, task: str, fields: Sequence[FieldSpec], examples: Sequence[SpanExample], *,
                 error_rates: Mapping[str, float], seed: int = 0, malformed_rate: float = 0.005) -> None:
        self.task, self.fields, self.seed = task, tuple(fields), seed
        self.names = tuple(f.name for f in self.fields)
        self.malformed_rate = malformed_rate
        unknown = sorted({f for e in examples for f in e.spans} - set(self.names))
        if unknown:
            raise ValueError(f"task {task}: the data has fields outside the task's fields: {unknown}")
        bad = {f: r for f, r in error_rates.items() if not 0.0 <= r < 1.0}
        if bad or set(error_rates) - set(self.names):
            raise ValueError(f"task {task}: error rates must be in [0, 1) for the task's fields, got {dict(error_rates)}")
        self.error_rates = {f: float(error_rates.get(f, 0.0)) for f in self.names}

        by_input: dict[str, Counter] = {}
        first: dict[tuple[str, str], SpanExample] = {}
        for e in examples:
            key, answer = normalise_input(e.text), fields_json(e.values(self.names), self.names)
            by_input.setdefault(key, Counter())[answer] += 1
            first.setdefault((key, answer), e)
        self.examples = {key: first[(key, votes.most_common(1)[0][0])] for key, votes in by_input.items()}
        self.conflicting_inputs = sum(len(votes) > 1 for votes in by_input.values())

        self._scale: dict[str, float] = {}
        self._bump: dict[str, dict[str, float]] = {f: {} for f in self.names}
        for f in self.names:
            present = {key: hardness(e, f) for key, e in self.examples.items() if f in e.spans}
            self._bump[f] = present
            weights = np.exp(np.array(list(present.values()), dtype=np.float64))
            self._scale[f] = calibrate_scale(weights, self.error_rates[f]) if len(weights) else 0.0

    def p_err(self, text: str, f: str) -> float:
        """The chance that field `f` of `text` (a data set input with `f` present) is answered wrongly."""
        bump = self._bump[f].get(normalise_input(text))
        return 0.0 if bump is None else min(1.0, self._scale[f] * float(np.exp(bump)))

    def expected_error_rate(self, f: str) -> float:
        bumps = np.array(list(self._bump[f].values()), dtype=np.float64)
        return float(np.minimum(1.0, self._scale[f] * np.exp(bumps)).mean()) if len(bumps) else 0.0

    def gold(self, text: str) -> dict[str, str | None] | None:
        example = self.examples.get(normalise_input(text))
        return None if example is None else example.values(self.names)

    def answer(self, text: str) -> FieldsVerdict:
        normalised = normalise_input(text)
        u_malformed, u_form = draw_uniforms(self.task, normalised, self.seed, n=2)
        example = self.examples.get(normalised)
        if example is None:
            values = read_by_patterns(text, self.names)
            return self._verdict(values, None, (), {}, u_malformed, u_form)
        spans = dict(example.spans)  # values are cut from the data set's spelling of this normalised input
        kinds: dict[str, str] = {}
        moved: dict[str, Span] = {}
        for f in self.names:
            if f not in example.spans:
                continue
            u_err, u_kind, u_detail = draw_uniforms(f"{self.task}\x00{f}", normalised, self.seed, n=3)
            if u_err >= self.p_err(text, f):
                continue
            kind, new = self._error(example, f, u_kind, u_detail)
            kinds[f] = kind
            del spans[f]
            if kind == "confuse":
                moved[CONFUSABLE[f]] = example.spans[f]
            elif kind == "boundary":
                spans[f] = new
        spans.update(moved)
        values = {f: (example.text[spans[f][0]:spans[f][1]] if f in spans else None) for f in self.names}
        gold = example.values(self.names)
        wrong = tuple(f for f in self.names if values[f] != gold[f])
        return self._verdict(values, gold, wrong, kinds, u_malformed, u_form)

    def _error(self, example: SpanExample, f: str, u_kind: float, u_detail: float) -> tuple[str, Span | None]:
        options = []
        if confusable_target(example, f):
            options.append("confuse")
        shifted = shift_boundary(example.text, example.spans[f], u_detail)
        if shifted is not None and shifted != example.spans[f] and shifted[1] > shifted[0]:
            options.append("boundary")
        options.append("miss")
        kind = pick_kind(options, u_kind)
        return kind, shifted if kind == "boundary" else None

    def _verdict(self, values: dict[str, str | None], gold: dict[str, str | None] | None, wrong: tuple[str, ...],
                 kinds: dict[str, str], u_malformed: float, u_form: float) -> FieldsVerdict:
        malformed = u_malformed < self.malformed_rate
        content = malform_json(values, self.fields, u_form) if malformed else json.dumps(values)
        return FieldsVerdict(content, values, gold, gold is not None, wrong, kinds, malformed)
