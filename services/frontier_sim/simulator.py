"""The simulator's service layer, no HTTP: which task a chat request is for, its answer and token
use, the faults and latency to inject, and the tally that /v1/sim/stats and /v1/sim/report give.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.common.normalize import normalise_input
from services.common.tasks import TaskRegistry, TaskSpec
from services.frontier_sim.extraction import ExtractionOracle, FieldsVerdict, read_span_examples
from services.frontier_sim.oracle import ClassificationOracle, Example, Verdict, draw_uniforms, read_examples
from services.frontier_sim.replies import draft_reply
from services.frontier_sim.settings import DEFAULT_FIELD_ERROR_RATES, FAULTS, Fault, SimSettings

log = logging.getLogger("graduate.frontier_sim")
ERROR_KINDS = ("wrong_label", "wrong_fields", "malformed", "http_500", "http_429", "timeout", "garbage", "bad_request")
FAULT_ERROR_KIND: dict[Fault, str] = {"500": "http_500", "429": "http_429", "timeout": "timeout", "garbage": "garbage"}


def input_latency_ms(task: str, text: str, seed: int, low_ms: float, high_ms: float) -> float:
    """The simulated latency of one input under latency_per_input: uniform in [low, high], a function of
    (task, normalised input, seed) alone (drawn apart from the answer's own draws), so the same traffic
    waits the same in every run, whatever the arrival order; a benchmark can compute it too."""
    u = draw_uniforms(f"{task}\x00latency", normalise_input(text), seed, 1)[0]
    return low_ms + (high_ms - low_ms) * u


class SimError(Exception):
    """A request the simulator refuses, as an OpenAI-style error with an HTTP status."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatInput:
    task: TaskSpec | None  # None: the request names no task and matches none (answered freeform)
    text: str
    prompt_tokens: int


@dataclass(frozen=True)
class Completion:
    task: str | None
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def estimate_tokens(text: str) -> int:
    """About four characters a token, as for English text with the common BPE vocabularies."""
    return math.ceil(len(text) / 4) if text else 0


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def count_prompt_tokens(messages: list[dict[str, Any]], task: TaskSpec | None) -> int:
    """Message text plus the chat format's few tokens a message; the task's prompt when the
    request carries no system message (the model could not answer the task without it)."""
    tokens = 3 + sum(4 + estimate_tokens(message_text(m)) for m in messages)
    if task is not None and not any(m.get("role") == "system" for m in messages):
        tokens += 4 + estimate_tokens(task.prompt())
    return tokens


@dataclass
class Tally:
    """What the simulator has answered so far, graded against the data set's labels."""

    requests: int = 0
    answers: Counter = field(default_factory=Counter)  # by task ('' for no task)
    errors: Counter = field(default_factory=Counter)  # by kind, see ERROR_KINDS
    graded: int = 0  # classification answers to inputs found in the data set
    correct: int = 0  # ... whose label is the gold one
    parsed_correct: int = 0  # ... which also parse (not malformed)
    ungraded: int = 0  # classification answers to inputs not in the data set
    extraction: dict[str, "FieldTally"] = field(default_factory=dict)  # by extraction task

    def record_verdict(self, verdict: Verdict) -> None:
        self.errors["wrong_label"] += verdict.wrong
        self.errors["malformed"] += verdict.malformed
        if not verdict.gold_known:
            self.ungraded += 1
            return
        self.graded += 1
        self.correct += verdict.label == verdict.gold
        self.parsed_correct += verdict.label == verdict.gold and not verdict.malformed

    def record_fields(self, task: str, verdict: FieldsVerdict) -> None:
        self.errors["wrong_fields"] += verdict.wrong
        self.errors["malformed"] += verdict.malformed
        self.extraction.setdefault(task, FieldTally()).record(verdict)


@dataclass
class FieldTally:
    """An extraction task's answers so far, graded field by field against the data set's spans."""

    graded: int = 0  # answers to inputs found in the data set
    exact: int = 0  # ... with every field right
    parsed_exact: int = 0  # ... which also parse (not malformed)
    ungraded: int = 0
    present: Counter = field(default_factory=Counter)  # by field: graded answers whose gold has the field
    wrong: Counter = field(default_factory=Counter)  # ... answered with another value (or none)
    spurious: Counter = field(default_factory=Counter)  # by field: a value where the gold has none

    def record(self, verdict: FieldsVerdict) -> None:
        if verdict.gold is None:
            self.ungraded += 1
            return
        self.graded += 1
        self.exact += not verdict.wrong
        self.parsed_exact += not verdict.wrong and not verdict.malformed
        for name, gold in verdict.gold.items():
            if gold is not None:
                self.present[name] += 1
                self.wrong[name] += verdict.values.get(name) != gold
            elif verdict.values.get(name) is not None:
                self.spurious[name] += 1

    def summary(self, configured: dict[str, float]) -> dict[str, Any]:
        return {
            "graded_answers": self.graded, "ungraded_answers": self.ungraded,
            "realised_exact_match": self.exact / self.graded if self.graded else None,
            "realised_parsed_exact_match": self.parsed_exact / self.graded if self.graded else None,
            "fields": {name: {"configured_error_rate": rate, "present": self.present[name],
                              "realised_error_rate": self.wrong[name] / self.present[name] if self.present[name] else None,
                              "spurious": self.spurious[name]} for name, rate in configured.items()},
        }


Oracle = ClassificationOracle | ExtractionOracle


class Simulator:
    """Answers chat requests for the tasks in the registry, with one oracle per labelled task."""

    def __init__(self, settings: SimSettings, tasks: TaskRegistry, oracles: dict[str, Oracle],
                 rng: random.Random | None = None) -> None:
        self.settings, self.tasks, self.oracles = settings, tasks, oracles
        self.tally = Tally()
        self._rng = rng or random.Random(settings.seed)

    def read_request(self, messages: list[dict[str, Any]], task_header: str | None,
                     metadata: dict[str, Any] | None) -> ChatInput:
        """The task and model input of a request; SimError (4xx) when it cannot be answered."""
        self.tally.requests += 1
        try:
            task = self._identify_task(messages, task_header, metadata)
            text = self._model_input(task, messages)
        except SimError:
            self.tally.errors["bad_request"] += 1
            raise
        return ChatInput(task, text, count_prompt_tokens(messages, task))

    def _model_input(self, task: TaskSpec | None, messages: list[dict[str, Any]]) -> str:
        if task is None:
            users = [m for m in messages if m.get("role") == "user"]
            if not users or not message_text(users[-1]).strip():
                raise SimError(400, "messages: no user message with text", param="messages")
            return message_text(users[-1])
        if task.kind != "freeform" and task.name not in self.oracles:
            raise SimError(400, f"task {task.name}: the simulator has no labelled data for this {task.kind} task "
                                f"(it labels {', '.join(sorted(self.oracles))})", code="task_not_simulated")
        try:
            return task.extract_input(messages)
        except ValueError as exc:
            raise SimError(400, str(exc), param="messages") from None

    def _identify_task(self, messages: list[dict[str, Any]], task_header: str | None,
                       metadata: dict[str, Any] | None) -> TaskSpec | None:
        """By header, else metadata.task, else the system prompt of a known task; None if none."""
        name = task_header or (metadata or {}).get("task")
        if name:
            try:
                return self.tasks.get(str(name))
            except KeyError as exc:
                raise SimError(404, exc.args[0], code="unknown_task") from None
        system = normalise_input(" ".join(message_text(m) for m in messages if m.get("role") == "system"))
        if not system:
            return None
        for spec in self.tasks.tasks.values():
            prefix = _prompt_prefix(spec)
            if system == normalise_input(spec.prompt()) or (prefix and system.startswith(prefix)):
                return spec
        return None

    def answer(self, chat: ChatInput, max_tokens: int | None = None) -> Completion:
        task = chat.task
        oracle = self.oracles.get(task.name) if task is not None else None
        if isinstance(oracle, ClassificationOracle):
            verdict = oracle.answer(chat.text)
            self.tally.record_verdict(verdict)
            content = verdict.content
        elif isinstance(oracle, ExtractionOracle):
            fields = oracle.answer(chat.text)
            self.tally.record_fields(task.name, fields)
            content = fields.content
        else:
            content = draft_reply(task.name if task else "", chat.text, self.settings.seed)
        self.tally.answers[task.name if task else ""] += 1
        completion_tokens, finish_reason = max(1, estimate_tokens(content)), "stop"
        if max_tokens is not None and completion_tokens > max_tokens:
            content, completion_tokens, finish_reason = content[:4 * max_tokens], max_tokens, "length"
        return Completion(task.name if task else None, content, chat.prompt_tokens, completion_tokens, finish_reason)

    def draw_fault(self, header: str | None) -> Fault | None:
        """The fault the header asks for, else one drawn at the configured rates, else None."""
        if header:
            if header not in FAULTS:
                self.tally.errors["bad_request"] += 1
                raise SimError(400, f"X-Sim-Fault must be one of {', '.join(FAULTS)}, got {header!r}")
            fault: Fault | None = header  # type: ignore[assignment]
        else:
            u, fault = self._rng.random(), None
            for kind, rate in self.settings.fault_rates().items():
                if u < rate:
                    fault = kind
                    break
                u -= rate
        if fault is not None:
            self.tally.errors[FAULT_ERROR_KIND[fault]] += 1
        return fault

    def draw_latency_s(self, chat: ChatInput | None = None) -> float:
        """How long to sleep before answering: drawn in arrival order from the seeded generator, or,
        with latency_per_input, a function of the request's task and input (and the seed)."""
        s = self.settings
        if s.latency_per_input and chat is not None:
            return input_latency_ms(chat.task.name if chat.task else "", chat.text, s.seed, s.latency_min_ms,
                                    s.latency_max_ms) / 1000.0
        return self._rng.uniform(s.latency_min_ms, s.latency_max_ms) / 1000.0

    def stats(self) -> dict[str, Any]:
        s, t = self.settings, self.tally
        return {
            "simulator": True,
            "model": s.model_name,
            "note": "SIMULATED frontier model answering from a labelled data set; not a real LLM",
            "configured_accuracy": s.accuracy,
            "realised_accuracy": t.correct / t.graded if t.graded else None,
            "realised_parsed_accuracy": t.parsed_correct / t.graded if t.graded else None,
            "graded_answers": t.graded,
            "ungraded_answers": t.ungraded,
            "requests": t.requests,
            "answers": sum(t.answers.values()),
            "answers_by_task": {k or "(no task)": v for k, v in sorted(t.answers.items())},
            "errors_by_kind": {kind: t.errors[kind] for kind in ERROR_KINDS},
            "malformed_rate": s.malformed_rate,
            "latency_ms": {"min": s.latency_min_ms, "max": s.latency_max_ms, "per_input": s.latency_per_input},
            "seed": s.seed,
            "labelled_tasks": {name: str(s.extraction_data_dir if isinstance(o, ExtractionOracle)
                                         else s.more_data.get(name, s.data_dir))
                               for name, o in self.oracles.items()},
            "extraction": {name: tally.summary(self.oracles[name].error_rates)
                           for name, tally in sorted(t.extraction.items())},
            "extraction_malformed_rate": s.extraction_malformed_rate,
        }

    def report(self) -> str:
        s, t = self.settings, self.tally
        realised = (f"{100 * t.correct / t.graded:.1f} % over {t.graded} graded answers"
                    if t.graded else "not measured yet (no graded answers)")
        classified = sorted(n for n, o in self.oracles.items() if isinstance(o, ClassificationOracle))
        text = (f"This is a SIMULATED frontier model ({s.model_name}), not a real LLM: it answers "
                f"{', '.join(classified)} from the labelled data in "
                f"{', '.join(str(p) for p in [s.data_dir, *s.more_data.values()])} with a configured "
                f"accuracy of {100 * s.accuracy:.1f} % (realised {realised}), errs on confusable labels, "
                f"and sleeps {s.latency_min_ms:g}-{s.latency_max_ms:g} ms per answer"
                f"{' (a function of the input)' if s.latency_per_input else ''}.")
        for name, oracle in sorted(self.oracles.items()):
            if isinstance(oracle, ExtractionOracle):
                text += f" It answers {name} " + _extraction_report(oracle, s, t.extraction.get(name))
        return text


def _extraction_report(oracle: ExtractionOracle, s: SimSettings, tally: "FieldTally | None") -> str:
    rates = ", ".join(f"{name} {100 * rate:.1f} %" for name, rate in oracle.error_rates.items())
    realised = "not measured yet (no graded answers)"
    if tally is not None and tally.graded:
        realised = (f"exact match {100 * tally.exact / tally.graded:.1f} % over {tally.graded} graded answers; "
                    + ", ".join(f"{name} {100 * tally.wrong[name] / tally.present[name]:.1f} %"
                                for name in oracle.names if tally.present[name]))
    return (f"from the spans in {s.extraction_data_dir} as JSON, with configured per-field error rates {rates} "
            f"(realised: {realised}) and {100 * s.extraction_malformed_rate:.1f} % malformed JSON.")


def in_scope(examples: list[Example], spec: TaskSpec) -> list[Example]:
    """Examples whose label is outside the task's labels answer the task's out-of-scope label (where
    it has one), as a model told "answer {oos} when no label fits" would."""
    if not spec.out_of_scope_label:
        return examples
    return [e if e.label in spec.labels else Example(e.text, spec.out_of_scope_label) for e in examples]


def build_simulator(settings: SimSettings, tasks: TaskRegistry) -> Simulator:
    """Load the labelled data and precompute the oracles; ValueError names what is wrong.

    The extraction oracle is built when the registry has the extraction task and its data is there."""
    oracles: dict[str, Oracle] = {}
    for name, folder in ({settings.data_task: settings.data_dir} | settings.more_data).items():
        spec = tasks.get(name)
        if spec.kind != "classification":
            raise ValueError(f"simulated data for task {spec.name}: it is {spec.kind}, not classification")
        oracles[name] = ClassificationOracle(spec.name, spec.answers, in_scope(read_examples(folder), spec),
                                             accuracy=settings.accuracy, seed=settings.seed,
                                             malformed_rate=settings.malformed_rate,
                                             confusable_labels=settings.confusable_labels)
    extraction = tasks.tasks.get(settings.extraction_task)
    if extraction is not None and settings.extraction_data_dir.is_dir():
        oracles[extraction.name] = build_extraction_oracle(settings, extraction)
    return Simulator(settings, tasks, oracles)


def build_extraction_oracle(settings: SimSettings, spec: TaskSpec) -> ExtractionOracle:
    if spec.kind != "extraction":
        raise ValueError(f"GRADUATE_SIM_EXTRACTION_TASK: task {spec.name} is {spec.kind}, not extraction")
    names = {f.name for f in spec.fields}
    rates = {k: v for k, v in (DEFAULT_FIELD_ERROR_RATES | settings.field_error_rates).items() if k in names}
    return ExtractionOracle(spec.name, spec.fields, read_span_examples(settings.extraction_data_dir),
                            error_rates=rates, seed=settings.seed, malformed_rate=settings.extraction_malformed_rate)


def _prompt_prefix(spec: TaskSpec) -> str:
    return normalise_input(spec.system_prompt.split("{labels}")[0])
