"""What the curator admits into the dataset: the captured topic is a trust boundary.

Backend services publish their own calls to `graduate.calls.captured` (the capture client), so a
record there is checked before it can become training data: the task is known, the call_id is
there, the answer is parsed again against the task's label set or fields (a parse failure stays a
parse failure, never a label), and the text is redacted again by the task's policy — PII a
producer left in is replaced, or the record is refused where the task says so. Pure functions;
the worker dead-letters a refusal with its reason, the snapshot leaves it out and counts it.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from services.common.contracts import CapturedCall
from services.common.redaction import Redacted, Redactor
from services.common.tasks import ParseFailure, TaskRegistry, TaskSpec
from services.curator.logic import CuratedCall, curate_call, ts_ms

CALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
PRODUCER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class Refused(ValueError):
    """A captured record the dataset must not hold; `code` names the rule, the message explains."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"refused ({code}): {message}")
        self.code = code


@dataclass
class Admission:
    """The task registry and one compiled redactor per task (built once per worker)."""

    tasks: TaskRegistry
    redactors: dict[str, Callable[[str], Redacted]]  # of answers (a task's few labels, cached)
    parsers: dict[str, Callable[[str], str]]
    input_redactors: dict[str, Callable[[str], Redacted]] | None = None  # of inputs (re-asked ones, cached)
    curated: OrderedDict[tuple, tuple] = field(default_factory=OrderedDict)  # what `curate` remembers (LRU)

    @classmethod
    def of(cls, tasks: TaskRegistry) -> "Admission":
        redactors = {name: Redactor(spec.redaction.patterns) for name, spec in tasks.tasks.items()}
        return cls(tasks, {name: answers_cached(r) for name, r in redactors.items()},
                   {name: parses_cached(spec) for name, spec in tasks.tasks.items()},
                   {name: answers_cached(r, INPUTS_CACHED) for name, r in redactors.items()})

    def admit(self, call: CapturedCall) -> CapturedCall:
        """The call as the dataset may hold it, or `Refused` saying why not."""
        if not CALL_ID.fullmatch(call.call_id):
            raise Refused("call_id", f"call_id {call.call_id[:40]!r} is empty or not 1-128 of [A-Za-z0-9._:-]")
        spec = self.tasks.tasks.get(call.task)
        if spec is None:
            raise Refused("unknown_task", f"task {call.task[:60]!r} is not in the task specs "
                                          f"(known: {', '.join(sorted(self.tasks.tasks))})")
        if not call.input.strip():
            raise Refused("empty_input", "the input is empty")
        return redact_by_policy(spec, self.redactors[spec.name], reparse(spec, call, self.parsers[spec.name]),
                                self.input_redactors[spec.name] if self.input_redactors else None)

    def curate(self, call: CapturedCall, holdout_fraction: float) -> CuratedCall:
        """`curate_call(self.admit(call), holdout_fraction)`: the same CuratedCall, or the same
        refusal. What admission and curation make of a call depends on its call_id (checked every
        time), its timestamp (taken every time) and its task, input and answer: that part is
        remembered for the INPUTS_CACHED (task, input, answer)s used last, so a re-asked input with
        an answer seen before costs a check and a lookup (refusals are not remembered). An OrderedDict:
        evicting a plain dict's oldest key scans the holes that earlier evictions left."""
        key = (call.task, call.input, call.output_raw, call.output, call.parse_ok, holdout_fraction)
        cache = self.curated
        known = cache.get(key)
        if known is None or not CALL_ID.fullmatch(call.call_id):
            curated = curate_call(self.admit(call), holdout_fraction)
            while len(cache) >= INPUTS_CACHED:
                cache.popitem(last=False)
            cache[key] = (curated.input, curated.normalised_hash, curated.split, curated.label)
            return curated
        cache.move_to_end(key)
        text, digest, split, label = known
        return CuratedCall(call.call_id, call.task, ts_ms(call.ts), text, digest, split, label)


INPUTS_CACHED = 1 << 15  # inputs remembered per task: as many as the curator's input hashes (logic.py)


def answers_cached(redactor: Redactor, size: int = 4096) -> Callable[[str], Redacted]:
    """The redactor with the short texts it saw remembered: a task's answers repeat (labels), and
    so do the inputs of a hot task, so most are redacted once, not once per call (redaction is pure)."""
    cached = lru_cache(maxsize=size)(redactor)

    def redact(text: str) -> Redacted:
        return cached(text) if len(text) <= 256 else redactor(text)
    return redact


class _Unparsable(str):
    """A remembered ParseFailure (the cache holds values, not exceptions)."""


def parses_cached(spec: TaskSpec, size: int = 4096) -> Callable[[str], str]:
    """`spec.parse_output` with the short answers it saw remembered, failures included: a task's
    answers repeat (labels), so most are parsed once, not once per call (parsing is pure)."""
    @lru_cache(maxsize=size)
    def parse_or_failure(answer: str) -> str:
        try:
            return spec.parse_output(answer)
        except ParseFailure as exc:
            return _Unparsable(str(exc))

    def parse(answer: str) -> str:
        out = parse_or_failure(answer) if len(answer) <= 256 else spec.parse_output(answer)
        if isinstance(out, _Unparsable):
            raise ParseFailure(str(out))
        return out
    return parse


def reparse(spec: TaskSpec, call: CapturedCall, parse: Callable[[str], str] | None = None) -> CapturedCall:
    """The answer parsed again against the task's labels or fields: a label outside the set, or a
    record that says it parsed with no output, becomes a parse failure (kept, never a label)."""
    if not spec.graduatable:
        return call
    if not call.parse_ok or call.output is None or call.output == "":
        return call.model_copy(update={"output": None, "parse_ok": False})
    try:
        output = (parse or spec.parse_output)(call.output)
    except ParseFailure:
        return call.model_copy(update={"output": None, "parse_ok": False})
    return call if output == call.output else call.model_copy(update={"output": output})


def redact_by_policy(spec: TaskSpec, redactor: Callable[[str], Redacted], call: CapturedCall,
                     input_redactor: Callable[[str], Redacted] | None = None) -> CapturedCall:
    """Redact the input and answers again (placeholders never match, so a redacted record is
    unchanged). PII found is replaced; with `redaction.captured: refuse` the record is refused."""
    red_input, red_raw = (input_redactor or redactor)(call.input), redactor(call.output_raw)
    red_output = None if call.output is None else red_raw if call.output == call.output_raw else redactor(call.output)
    if not (red_input.counts or red_raw.counts or (red_output is not None and red_output.counts)):
        return call  # nothing found (most records)
    counts: dict[str, int] = {}
    for r in (red_input, red_raw, red_output):
        for name, n in (r.counts if r else {}).items():
            counts[name] = counts.get(name, 0) + n
    if not counts:
        return call
    found = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))
    if spec.redaction.captured == "refuse":
        raise Refused("unredacted", f"task {spec.name} requires redacted records; found {found} "
                                    f"(record says redacted={str(call.redacted).lower()})")
    return call.model_copy(update={"input": red_input.text, "output_raw": red_raw.text,
                                   "output": red_output.text if red_output else None, "redacted": True})


def producer_of(call: CapturedCall) -> str:
    """Who published the record, for the refusal metric: the router replica or the calling service
    named in its trace, else "unknown"; anything odd is "other" (bounded label values)."""
    name = call.trace.get("router") and f"router:{call.trace['router']}" or call.trace.get("caller") \
        or call.trace.get("producer") or "unknown"
    return name if PRODUCER.fullmatch(name) else "other"
