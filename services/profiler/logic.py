"""Candidate discovery, as pure functions: profile a task's captured calls, score the playbook's
four traits, and price owning a small model honestly.

A `Profile` is a mergeable summary (plain JSON) built from one small record per call
(`summarise_call`), so the worker (which keeps those records) and `graduate candidates` (which
replays the whole topic) compute the same thing with the same code.
Time comes from the records (never the clock), so a replayed stream gives the same answer.

The task's kind decides what "narrow" means: a classification answer is one of few values (distinct
outputs, entropy); an extraction answer is a JSON object with the spec's known fields, so it is
narrow by its structure (the share of answers that conform, per-field fill and distinct values);
a freeform task is never narrow.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from datetime import datetime, timezone
from typing import Iterable, Optional

from services.common import sample
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.normalize import input_hash, normalise_input
from services.common.tasks import TaskSpec

DAY_MS = 86_400_000
LATENCY_RATIO = 1.05  # latency histogram buckets grow by 5 %: percentiles within ~2.5 %
TRAITS = ("high_volume", "narrow_stable_output", "latency_or_cost_sensitive", "cheap_training_data")


def _ms(ts: datetime) -> int:
    return int((ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def _day(ms: int) -> str:
    return _day_of(ms // DAY_MS)


@lru_cache(maxsize=1024)
def _day_of(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%d")


def output_key(output: str) -> str:
    """Outputs are counted by value; long ones (free text) by a short hash."""
    return output if len(output) <= 64 else "#" + hashlib.sha1(output.encode()).hexdigest()[:16]


def latency_bucket(ms: float) -> int:
    return 0 if ms < 1 else int(math.log(ms) / math.log(LATENCY_RATIO)) + 1


def bucket_value(bucket: int) -> float:
    return 0.5 if bucket == 0 else LATENCY_RATIO ** (bucket - 0.5)


def percentile(hist: dict, q: float) -> Optional[float]:
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for b in sorted(hist, key=int):
        seen += hist[b]
        if seen >= rank:
            return round(bucket_value(int(b)), 1)
    return round(bucket_value(int(max(hist, key=int))), 1)


def _add(d: dict, key, n=1) -> None:
    d[key] = d.get(key, 0) + n


MAX_OBJECT_FIELDS = 64  # an answer object with more keys keeps no per-field record (never a spec's shape)


def value_key(value) -> str:
    """A JSON field value, counted by value (long ones by a short hash)."""
    return output_key(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def as_object(output: str) -> Optional[dict]:
    """The answer as a JSON object, or None (a label, free text, a JSON scalar or array)."""
    if not output.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(output)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@lru_cache(maxsize=1 << 15)
def input_key(task: str, text: str) -> str:
    """16 hex of the input's hash: pure, so a re-asked input (a hot task's duplicates) is normalised
    and hashed once while it stays among the 32 Ki most recent."""
    return input_hash(task, normalise_input(text))[:8].hex()


def summarise_call(call: CapturedCall) -> list:
    """What the profile needs of a captured call, small enough to keep one per call (JSON):
    [ts_ms, latency_ms, cost_usd, output key or None, input hash] and, when the answer is a JSON
    object, a sixth element {field: value key, or None when the field is null or empty}.
    An object's output key is that of its canonical form (the spec parser's: sorted keys), so
    equal objects are equal outputs however they were spaced."""
    usable = call.parse_ok and call.output is not None and call.output != ""
    obj = as_object(call.output) if usable else None
    key = None if not usable else output_key(call.output if obj is None else json.dumps(obj, sort_keys=True))
    record = [_ms(call.ts), call.latency_ms, call.cost_usd, key, input_key(call.task, call.input)]
    if obj is not None and len(obj) <= MAX_OBJECT_FIELDS:
        record.append({str(k): None if v is None or v == "" else value_key(v) for k, v in obj.items()})
    return record


def summarise_outcome(outcome: RouterOutcome) -> list:
    return [_ms(outcome.ts), outcome.served_by, outcome.small_latency_ms]


@dataclass
class Profile:
    """Mergeable summary of one task's traffic. Keep it JSON: the worker stores it in a table."""

    task: str
    calls: int = 0  # captured calls (frontier, fallback and sampled)
    small_served: int = 0  # requests the small model answered (never captured)
    parse_failures: int = 0
    first_ms: Optional[int] = None
    last_ms: Optional[int] = None
    days: dict = field(default_factory=dict)  # UTC day -> requests
    outputs: dict = field(default_factory=dict)  # output key -> count (usable answers)
    outputs_overflow: int = 0  # answers not counted by value once `output_cap` keys exist
    latency: dict = field(default_factory=dict)  # bucket -> count (frontier latency of captured calls)
    cost_usd: float = 0.0
    inputs: dict = field(default_factory=dict)  # input hash -> [first output key, conflict 0/1, usable answers]
    inputs_sampled: float = 1.0  # share of inputs tracked in `inputs` (by hash, so merges agree)
    inputs_cap: int = sample.DEFAULT_CAP  # more tracked inputs halve `inputs_sampled` (services/common/sample.py)
    days_cap: int = 62  # UTC days kept in `days` (the oldest go first); the window is days_cap at most
    outcomes: dict = field(default_factory=dict)  # served_by -> count (router outcomes)
    small_latency: dict = field(default_factory=dict)  # bucket -> count
    output_cap: int = 5000
    # JSON-object answers (extraction tasks): judged against the spec's fields when measured
    shapes: dict = field(default_factory=dict)  # JSON list of the object's sorted keys -> count
    shapes_overflow: int = 0  # objects whose shape was not counted once `shape_cap` shapes exist
    field_filled: dict = field(default_factory=dict)  # field -> answers with a non-null, non-empty value
    field_values: dict = field(default_factory=dict)  # field -> {value key -> count}
    field_overflow: dict = field(default_factory=dict)  # field -> values not counted once `field_value_cap` exist
    shape_cap: int = 100
    field_value_cap: int = 1000

    # -- building ----------------------------------------------------------------------------
    def _seen(self, ms: int) -> None:
        self.first_ms = ms if self.first_ms is None else min(self.first_ms, ms)
        self.last_ms = ms if self.last_ms is None else max(self.last_ms, ms)
        _add(self.days, _day(ms))
        if len(self.days) > self.days_cap:
            del self.days[min(self.days)]

    def add_call(self, call: CapturedCall) -> None:
        self.add_call_summary(summarise_call(call))

    def _add_object(self, fields: dict) -> None:
        shape = json.dumps(sorted(fields))
        if shape in self.shapes or len(self.shapes) < self.shape_cap:
            _add(self.shapes, shape)
        else:
            self.shapes_overflow += 1
        for name, value in fields.items():
            if value is None:
                continue
            _add(self.field_filled, name)
            values = self.field_values.setdefault(name, {})
            if value in values or len(values) < self.field_value_cap:
                _add(values, value)
            else:
                _add(self.field_overflow, name)

    def add_call_summary(self, summary: list) -> None:
        """Add a `summarise_call` record: [ts_ms, latency_ms, cost_usd, output key or None, input hash,
        and for a JSON-object answer its {field: value key}] (records without the sixth still count)."""
        ts, latency_ms, cost, key, digest_hex = summary[:5]
        if key is not None and len(summary) > 5 and isinstance(summary[5], dict):
            self._add_object(summary[5])
        self.calls += 1
        self._seen(ts)
        _add(self.latency, str(latency_bucket(latency_ms)))
        self.cost_usd += cost
        if key is None:
            self.parse_failures += 1
        else:
            if key in self.outputs or len(self.outputs) < self.output_cap:
                _add(self.outputs, key)
            else:
                self.outputs_overflow += 1
        if sample.kept(digest_hex, self.inputs_sampled):
            sample.note(self.inputs, digest_hex, key)
            if len(self.inputs) > self.inputs_cap:
                self.inputs_sampled = sample.shrink(self.inputs, self.inputs_sampled, self.inputs_cap)

    def add_outcome(self, outcome: RouterOutcome) -> None:
        self.add_outcome_summary(summarise_outcome(outcome))

    def add_outcome_summary(self, summary: list) -> None:
        """Add a `summarise_outcome` record: [ts_ms, served_by, small latency ms or None]."""
        ts, served_by, small_latency_ms = summary
        _add(self.outcomes, served_by)
        if small_latency_ms is not None:
            _add(self.small_latency, str(latency_bucket(small_latency_ms)))
        if served_by == "small":  # answered without the frontier, so never captured
            self.small_served += 1
            self._seen(ts)

    def merge(self, other: "Profile") -> "Profile":
        if other.task != self.task:
            raise ValueError(f"cannot merge profiles of {self.task} and {other.task}")
        out = Profile.from_json(self.to_json())
        out.calls += other.calls
        out.small_served += other.small_served
        out.parse_failures += other.parse_failures
        for ms in (other.first_ms, other.last_ms):
            if ms is not None:
                out.first_ms = ms if out.first_ms is None else min(out.first_ms, ms)
                out.last_ms = ms if out.last_ms is None else max(out.last_ms, ms)
        for mine, theirs in ((out.days, other.days), (out.latency, other.latency),
                             (out.outcomes, other.outcomes), (out.small_latency, other.small_latency)):
            for k, n in theirs.items():
                _add(mine, k, n)
        out.outputs_overflow += other.outputs_overflow
        for k, n in other.outputs.items():
            if k in out.outputs or len(out.outputs) < out.output_cap:
                _add(out.outputs, k, n)
            else:
                out.outputs_overflow += n
        out.shapes_overflow += other.shapes_overflow
        for k, n in other.shapes.items():
            if k in out.shapes or len(out.shapes) < out.shape_cap:
                _add(out.shapes, k, n)
            else:
                out.shapes_overflow += n
        for name, n in other.field_filled.items():
            _add(out.field_filled, name, n)
        for name, n in other.field_overflow.items():
            _add(out.field_overflow, name, n)
        for name, theirs in other.field_values.items():
            mine = out.field_values.setdefault(name, {})
            for k, n in theirs.items():
                if k in mine or len(mine) < out.field_value_cap:
                    _add(mine, k, n)
                else:
                    _add(out.field_overflow, name, n)
        out.cost_usd += other.cost_usd
        out.inputs_cap += other.inputs_cap  # a merged view keeps what both kept (bounded by the parts)
        out.inputs_sampled = sample.merge(out.inputs, out.inputs_sampled, other.inputs, other.inputs_sampled,
                                          out.inputs_cap)
        while len(out.days) > out.days_cap:
            del out.days[min(out.days)]
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        data = dict(data)
        data["inputs"] = {h: list(v) for h, v in data.get("inputs", {}).items()}
        data["field_values"] = {f: dict(v) for f, v in data.get("field_values", {}).items()}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# --- measuring --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measures:
    task: str
    calls: int
    requests: int
    span_hours: float
    calls_per_day: float
    distinct_outputs: int
    distinct_lower_bound: bool
    entropy_bits: float
    repeat_share: float  # share of usable answers whose output occurs more than once
    stability: Optional[float]  # share of repeated inputs always answered the same
    repeated_inputs: int
    latency_p50_ms: Optional[float]
    latency_p95_ms: Optional[float]
    cost_per_call_usd: float
    cost_per_day_usd: float
    usable_examples: int  # distinct normalised inputs with a usable answer (estimated if sampled)
    parse_failure_rate: float
    fallback_rate: Optional[float]  # measured from router outcomes in small mode
    small_latency_p50_ms: Optional[float]
    outcomes: int
    kind: Optional[str] = None  # the task spec's kind; None when the task has no spec (judged as classification)
    known_fields: tuple[str, ...] = ()  # extraction: the spec's fields
    conform_rate: Optional[float] = None  # extraction: share of answers that are a JSON object with only those fields
    # extraction: field -> {fill_rate (of conforming answers), distinct_values, distinct_lower_bound}
    field_stats: dict = field(default_factory=dict)


def _conforming(p: Profile, names: set) -> int:
    return sum(n for shape, n in p.shapes.items() if set(json.loads(shape)) <= names)


def field_stats(p: Profile, fields: tuple[str, ...], answers: int) -> dict:
    """Per known field: the share of conforming answers that fill it and its distinct values."""
    out = {}
    for name in fields:
        overflow = p.field_overflow.get(name, 0)
        out[name] = {"fill_rate": round(p.field_filled.get(name, 0) / answers, 4) if answers else 0.0,
                     "distinct_values": len(p.field_values.get(name, {})) + overflow,
                     "distinct_lower_bound": bool(overflow)}
    return out


def entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    if total == 0:
        return 0.0
    return max(0.0, -sum(n / total * math.log2(n / total) for n in counts if n))


def measure(p: Profile, *, window_days: int = 7, min_span_hours: float = 1.0,
            spec: Optional[TaskSpec] = None) -> Measures:
    """What the playbook looks at, from a profile. Calls per day: requests in the newest
    `window_days` days, over the time they cover (at least `min_span_hours`). With the task's
    spec, an extraction task is also measured by its answers' structure (`conform_rate`,
    `field_stats`)."""
    requests = p.calls + p.small_served
    if p.last_ms is None:
        span_ms, in_window = 0, 0
    else:
        window_start = p.last_ms - window_days * DAY_MS
        span_ms = p.last_ms - max(p.first_ms, window_start)
        first_day = _day(max(p.first_ms, window_start))
        in_window = sum(n for d, n in p.days.items() if d >= first_day)
    span_hours = max(span_ms / 3_600_000, min_span_hours)
    calls_per_day = in_window / (span_hours / 24) if requests else 0.0
    counts = list(p.outputs.values()) + [1] * p.outputs_overflow  # overflow counted as singletons
    usable = sum(counts)
    repeated = [v for v in p.inputs.values() if v[2] >= 2]
    tracked_usable = sum(1 for v in p.inputs.values() if v[0] is not None)
    cost_per_call = round(p.cost_usd / p.calls, 10) if p.calls else 0.0
    small_mode = p.outcomes.get("small", 0) + p.outcomes.get("fallback", 0)
    extraction: dict = {}
    if spec is not None and spec.kind == "extraction":
        names = tuple(f.name for f in spec.fields)
        conforming = _conforming(p, set(names))
        extraction = dict(known_fields=names, conform_rate=round(conforming / p.calls, 4) if p.calls else None,
                          field_stats=field_stats(p, names, conforming))
    return Measures(
        task=p.task, calls=p.calls, requests=requests, span_hours=round(span_hours, 2),
        calls_per_day=round(calls_per_day, 1), distinct_outputs=len(p.outputs) + p.outputs_overflow,
        distinct_lower_bound=bool(p.outputs_overflow),
        entropy_bits=round(entropy_bits(counts), 3),
        repeat_share=round(sum(n for n in p.outputs.values() if n > 1) / usable, 4) if usable else 0.0,
        stability=round(sum(1 for v in repeated if not v[1]) / len(repeated), 4) if repeated else None,
        repeated_inputs=len(repeated),
        latency_p50_ms=percentile(p.latency, 0.50), latency_p95_ms=percentile(p.latency, 0.95),
        cost_per_call_usd=cost_per_call, cost_per_day_usd=round(cost_per_call * calls_per_day, 4),
        usable_examples=round(tracked_usable / p.inputs_sampled) if p.inputs_sampled else 0,
        parse_failure_rate=round(p.parse_failures / p.calls, 4) if p.calls else 0.0,
        fallback_rate=round(p.outcomes.get("fallback", 0) / small_mode, 4) if small_mode else None,
        small_latency_p50_ms=percentile(p.small_latency, 0.50),
        outcomes=sum(p.outcomes.values()),
        kind=spec.kind if spec is not None else None, **extraction,
    )


# --- scoring ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    min_calls_per_day: float = 1000.0
    max_distinct_outputs: int = 1000
    min_repeat_share: float = 0.8
    max_entropy_bits: float = 10.0
    min_stability: float = 0.9
    min_repeated_inputs: int = 20
    max_parse_failure_rate: float = 0.1
    min_p95_latency_ms: float = 500.0
    min_cost_per_day_usd: float = 20.0
    min_usable_examples: int = 1000
    min_conform_rate: float = 0.95
    max_known_fields: int = 30


@dataclass(frozen=True)
class Trait:
    name: str
    passed: bool
    score: float  # 0..1; 1 when it passes
    reason: str


def _ratio(value: float, threshold: float) -> float:
    return 1.0 if threshold <= 0 else max(0.0, min(1.0, value / threshold))


def _stability_problem(m: Measures, t: Thresholds) -> Optional[str]:
    if m.stability is not None and m.repeated_inputs >= t.min_repeated_inputs and m.stability < t.min_stability:
        return f"same input answered differently: stability {m.stability:.0%} (needs ≥ {t.min_stability:.0%})"
    return None


def _stability_text(m: Measures, t: Thresholds) -> str:
    return ("stability not measured yet" if m.stability is None or m.repeated_inputs < t.min_repeated_inputs
            else f"stability {m.stability:.0%} on {m.repeated_inputs} repeated inputs")


def _narrow_by_value(m: Measures, t: Thresholds) -> Trait:
    """Classification (and a task without a spec): few distinct outputs, low entropy, answers repeat.
    A freeform task is never narrow."""
    problems = []
    if m.distinct_outputs > t.max_distinct_outputs:
        problems.append(f"{m.distinct_outputs}{'+' if m.distinct_lower_bound else ''} distinct outputs (> {t.max_distinct_outputs})")
    if m.repeat_share < t.min_repeat_share:
        problems.append(f"only {m.repeat_share:.0%} of answers repeat an output (needs ≥ {t.min_repeat_share:.0%})")
    if m.entropy_bits > t.max_entropy_bits:
        problems.append(f"output entropy {m.entropy_bits:.1f} bits (> {t.max_entropy_bits:g})")
    if _stability_problem(m, t):
        problems.append(_stability_problem(m, t))
    if m.parse_failure_rate > t.max_parse_failure_rate:
        problems.append(f"{m.parse_failure_rate:.0%} parse failures (> {t.max_parse_failure_rate:.0%})")
    stability = _stability_text(m, t)
    narrow_score = min(_ratio(m.repeat_share, t.min_repeat_share),
                       _ratio(t.max_distinct_outputs, max(m.distinct_outputs, 1)),
                       _ratio(t.max_entropy_bits, max(m.entropy_bits, 1e-9)),
                       _ratio(m.stability if m.stability is not None else 1.0, t.min_stability))
    if m.kind == "freeform":
        problems.append("free-form output (task kind freeform): open-ended text, not a graduation candidate")
    return Trait("narrow_stable_output", not problems, 1.0 if not problems else narrow_score,
                 "; ".join(problems) if problems else
                 f"{m.distinct_outputs} distinct outputs, {m.entropy_bits:.1f} bits, "
                 f"{m.repeat_share:.0%} repeat; {stability}; {m.parse_failure_rate:.1%} parse failures")


def _narrow_extraction(m: Measures, t: Thresholds) -> Trait:
    """Extraction: a JSON object with a fixed, known set of fields is narrow by its structure, however
    many distinct objects there are; judged by the share of answers that conform and by stability."""
    n_fields, conform = len(m.known_fields), m.conform_rate if m.conform_rate is not None else 0.0
    problems = []
    if conform < t.min_conform_rate:
        problems.append(f"only {conform:.1%} of answers are a JSON object with the {n_fields} known fields "
                        f"(needs ≥ {t.min_conform_rate:.0%})")
    if n_fields > t.max_known_fields:
        problems.append(f"{n_fields} known fields (> {t.max_known_fields})")
    if _stability_problem(m, t):
        problems.append(_stability_problem(m, t))
    fields = ", ".join(f"{name} {st['fill_rate']:.0%} filled ({st['distinct_values']}"
                       f"{'+' if st['distinct_lower_bound'] else ''} values)" for name, st in m.field_stats.items())
    score = min(_ratio(conform, t.min_conform_rate), _ratio(t.max_known_fields, max(n_fields, 1)),
                _ratio(m.stability if m.stability is not None else 1.0, t.min_stability))
    return Trait("narrow_stable_output", not problems, 1.0 if not problems else score,
                 "; ".join(problems) if problems else
                 f"JSON with {n_fields} known fields, {conform:.1%} of answers conform; {_stability_text(m, t)}; "
                 f"fields: {fields}")


def score_traits(m: Measures, t: Thresholds) -> list[Trait]:
    volume = Trait("high_volume", m.calls_per_day >= t.min_calls_per_day, _ratio(m.calls_per_day, t.min_calls_per_day),
                   f"{m.calls_per_day:,.0f} calls/day over {m.span_hours:g} h (needs ≥ {t.min_calls_per_day:,.0f})")

    narrow = _narrow_extraction(m, t) if m.kind == "extraction" else _narrow_by_value(m, t)

    p95 = m.latency_p95_ms or 0.0
    sensitive = p95 >= t.min_p95_latency_ms or m.cost_per_day_usd >= t.min_cost_per_day_usd
    latency_cost = Trait("latency_or_cost_sensitive", sensitive,
                         max(_ratio(p95, t.min_p95_latency_ms), _ratio(m.cost_per_day_usd, t.min_cost_per_day_usd)),
                         f"p95 {p95:,.0f} ms (≥ {t.min_p95_latency_ms:,.0f} counts), "
                         f"${m.cost_per_day_usd:,.2f}/day (≥ ${t.min_cost_per_day_usd:,.0f} counts)")

    data = Trait("cheap_training_data", m.usable_examples >= t.min_usable_examples,
                 _ratio(m.usable_examples, t.min_usable_examples),
                 f"{m.usable_examples:,} usable examples on hand (needs ≥ {t.min_usable_examples:,})")
    return [volume, narrow, latency_cost, data]


# --- economics --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Costs:
    instance_price_per_hour: float = 0.526
    serving_instances: int = 1
    hours_per_month: float = 730.0
    training_runs_per_month: float = 4.0
    training_run_usd: float = 2.0
    ops_allowance_per_month_usd: float = 200.0
    expected_fallback_rate: float = 0.2
    sampled_share: float = 0.02
    small_latency_ms: float = 20.0
    days_per_month: float = 30.0
    min_outcomes_to_measure: int = 200


@dataclass(frozen=True)
class Economics:
    frontier_monthly_usd: float
    small_fixed_monthly_usd: float
    still_paid_frontier_monthly_usd: float
    monthly_saving_usd: float
    break_even_calls_per_day: Optional[float]
    fallback_rate: float
    fallback_rate_measured: bool
    frontier_p50_ms: Optional[float]
    expected_p50_ms: Optional[float]
    latency_gain_ms: Optional[float]
    assumptions: str


def price(m: Measures, c: Costs) -> Economics:
    """Frontier spend against owning a model: serving hours, training runs, an ops allowance, and
    the fallback and sampled share still paid to the frontier."""
    measured = m.fallback_rate is not None and m.outcomes >= c.min_outcomes_to_measure
    fallback = m.fallback_rate if measured else c.expected_fallback_rate
    paid_share = min(1.0, fallback + c.sampled_share)
    frontier = m.cost_per_call_usd * m.calls_per_day * c.days_per_month
    fixed = (c.instance_price_per_hour * c.serving_instances * c.hours_per_month
             + c.training_runs_per_month * c.training_run_usd + c.ops_allowance_per_month_usd)
    still_paid = frontier * paid_share
    per_day_saved = m.cost_per_call_usd * (1 - paid_share) * c.days_per_month
    small_p50 = m.small_latency_p50_ms if (measured and m.small_latency_p50_ms is not None) else c.small_latency_ms
    expected = None if m.latency_p50_ms is None else small_p50 + fallback * m.latency_p50_ms
    return Economics(
        frontier_monthly_usd=round(frontier, 2), small_fixed_monthly_usd=round(fixed, 2),
        still_paid_frontier_monthly_usd=round(still_paid, 2), monthly_saving_usd=round(frontier - fixed - still_paid, 2),
        break_even_calls_per_day=round(fixed / per_day_saved, 0) if per_day_saved > 0 else None,
        fallback_rate=fallback, fallback_rate_measured=measured, frontier_p50_ms=m.latency_p50_ms,
        expected_p50_ms=None if expected is None else round(expected, 1),
        latency_gain_ms=None if expected is None else round(m.latency_p50_ms - expected, 1),
        assumptions=(f"{c.serving_instances} instance × ${c.instance_price_per_hour}/h × {c.hours_per_month:g} h, "
                     f"{c.training_runs_per_month:g} training runs × ${c.training_run_usd}, ops ${c.ops_allowance_per_month_usd:g}/month, "
                     f"fallback {fallback:.0%} ({'measured' if measured else 'assumed'}) + {c.sampled_share:.0%} sampled "
                     f"still paid to the frontier, small model p50 {small_p50:g} ms, {c.days_per_month:g} days/month"))


@dataclass(frozen=True)
class Candidate:
    task: str
    recommendation: str  # "graduate" | "stay on frontier"
    score: float
    failing: tuple[str, ...]
    traits: tuple[Trait, ...]
    measures: Measures
    economics: Economics

    def as_dict(self) -> dict:
        return asdict(self)


def assess(profile: Profile, t: Thresholds, c: Costs, *, window_days: int = 7, min_span_hours: float = 1.0,
           spec: Optional[TaskSpec] = None) -> Candidate:
    """The candidate for one task; `spec` (the task's spec, when known) decides how narrowness is judged."""
    m = measure(profile, window_days=window_days, min_span_hours=min_span_hours, spec=spec)
    traits = score_traits(m, t)
    econ = price(m, c)
    failing = [tr.name for tr in traits if not tr.passed]
    if econ.monthly_saving_usd <= 0:
        failing.append("saving")
    return Candidate(profile.task, "graduate" if not failing else "stay on frontier",
                     round(sum(tr.score for tr in traits) / len(traits), 4), tuple(failing), tuple(traits), m, econ)


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Graduation candidates first, then by trait score, saving, name."""
    return sorted(candidates, key=lambda c: (c.recommendation != "graduate", -c.score,
                                             -c.economics.monthly_saving_usd, c.task))


REPLAY_INPUTS_CAP = 1 << 16  # a replay holds the whole topic anyway: inputs exact up to 65 k distinct


def profile_calls(calls, outcomes=(), *, inputs_sampled: float = 1.0,
                  inputs_cap: int = REPLAY_INPUTS_CAP) -> dict[str, Profile]:
    """Profiles per task from captured calls and router outcomes (iterables of contracts)."""
    out: dict[str, Profile] = {}

    def profile(task: str) -> Profile:
        if task not in out:
            out[task] = Profile(task, inputs_sampled=inputs_sampled, inputs_cap=inputs_cap)
        return out[task]

    for call in calls:
        profile(call.task).add_call(call)
    for o in outcomes:
        profile(o.task).add_outcome(o)
    return out



# --- the worker's state: per source partition, a bounded Profile per task ---------------------

def fold_call_summaries(profiles: dict[str, Profile], summaries: Iterable[tuple[str, list]]) -> None:
    """Add (task, `summarise_call` record) pairs to a partition's profiles (in place)."""
    for task, record in summaries:
        p = profiles.get(task)
        if p is None:
            p = profiles[task] = Profile(task)
        p.add_call_summary(record)


def fold_outcomes(profiles: dict[str, Profile], outcomes: Iterable[RouterOutcome]) -> None:
    """Add router outcomes to a partition's profiles (in place); summarised first, so a bad one
    changes nothing."""
    records = [(o.task, summarise_outcome(o)) for o in outcomes]
    for task, record in records:
        p = profiles.get(task)
        if p is None:
            p = profiles[task] = Profile(task)
        p.add_outcome_summary(record)


def profiles_json(profiles: dict[str, Profile]) -> dict:
    return {task: p.to_json() for task, p in profiles.items()}


def profiles_from_json(data: dict) -> dict[str, Profile]:
    return {task: Profile.from_json(p) for task, p in data.items()}


def merge_profiles(parts: Iterable[dict[str, Profile]]) -> dict[str, Profile]:
    """One Profile per task from the profiles of several partitions."""
    out: dict[str, Profile] = {}
    for profiles in parts:
        for task, p in profiles.items():
            out[task] = out[task].merge(p) if task in out else Profile.from_json(p.to_json())
    return out
