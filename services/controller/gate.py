"""The gate: may a model version take over a task? Pure functions over the contracts, no broker.

Offline gate (on each ModelRegistered) — non-inferiority of the small model to the frontier on
the paired gold holdout table (b = small right and frontier wrong, c = the reverse, n items):

    H0: p_small - p_frontier <= -margin    against    H1: p_small - p_frontier > -margin

tested with Tango's score test for paired proportions (Tango 1998, Stat Med 17:891): the
statistic is Z = (b - c + n*margin) / sqrt(n * (2*q - margin - margin^2)), where q is the
maximum-likelihood P(frontier only) under H0 (closed form below); reject H0 when the one-sided
p-value 1 - Phi(Z) < alpha. Why this one:
- the conditional exact binomial on discordant pairs (exact McNemar) is exact only at margin 0;
  with a margin its null depends on the unknown discordance rate, so it needs a plug-in, and it
  has no information when the two models never disagree (it would refuse two identical models);
- a paired bootstrap is random, and too optimistic when discordant pairs are few;
- the score test uses the restricted MLE of the nuisance parameter, stays near its nominal
  level at a few hundred pairs (tests/unit/test_gate_statistics.py enumerates its exact size),
  reduces to McNemar's statistic at margin 0, and inverts into a confidence bound that the
  evidence reports. The exact McNemar p-value (two-sided, no margin) is reported beside it.

Which table: what a task in `small` serves is the small model's answer at or above the threshold
and the frontier's below it, so by default (`offline_table="served"`) the test runs on the table
of that served answer vs the frontier alone, when the trainer reports it in metrics_json as
`paired_at_threshold` (discordant pairs can then only come from kept items). The threshold was
searched on the same holdout, which would make that test optimistic, so the served table counts
only with the search's record (metrics_json.threshold_search, trainer/threshold.py): the gate
replays the fixed sequence of candidate thresholds with its own margin and alpha, and the
published threshold must be one the sequence reaches (every higher candidate passing too, on the
request and, for extraction, on every field), else the `threshold_search` check refuses; then
the false-pass rate stays at alpha (docs/DESIGN.md, "The threshold"). Without the record, or
with `offline_table="small"`, the test runs on ModelRegistered.paired (the small model
everywhere), which no threshold choice can flatter. The evidence names the table and always
carries the raw table's test too.

A refusal says what would help: when the small model alone trails the frontier on the holdout by
more than UNDERFIT_GAP, more holdout would not show non-inferiority; the reason says the model
underfits and what the trainer tried (metrics_json.fit: epochs run of the maximum, early stop,
best validation accuracy, learning rate) instead of how many more examples the test would need.

Extraction tasks (metrics_json.kind == "extraction"): request-level correctness is every field
right, which can hide a field the small model gets wrong more often than the frontier (it may be
better on the others). So the same test also runs on every field's own paired table (from
metrics_json: `per_field_paired_at_threshold`, the served answer, by default; else
`per_field_paired`, the small model everywhere), one check per field (`field:<name>`) held to
the same standard as the request-level one: a field refuses the model when non-inferiority is
not shown on it, and the reason names the field. Requiring every field to pass is an
intersection-union test, so no multiplicity correction is needed. A registration without a
field's table is refused (the gate cannot vouch for that field).

The holdout's gold is the reviewed label where a person reviewed the call, else the frontier's
answer, so on the unreviewed part the frontier is right by construction: the test is
conservative for the small model, and the evidence carries gold_reviewed / gold_frontier.

Shadow gate (on the judge's ShadowStats for the version in shadow), counting only comparisons
made since the task entered shadow with that version (the decision's `shadow_baseline`); the
predicted fallback rate is the shadow decision's, which for a retrain after a drift is the
holdout's per-label rates weighted by the traffic since the drift (`traffic_prediction`):
- comparisons: at least `min_shadow_comparisons` live comparisons, else pending;
- fallback: the live fallback rate 1 - kept/compared is at most `fallback_limit(predicted)`,
  the same level the post-cutover watch calls a breach (so a drifted task cannot flap back); the
  cutover then promises the higher of the prediction and the live rate it passed
  (control.promised_fallback), so the watch measures change from what the shadow saw;
- agreement at the threshold: with at least `min_shadow_kept` kept comparisons,
  kept_agreed/kept >= expected - margin, where expected is the holdout agreement with the
  frontier at the threshold (`kept_agreement` in the model's metrics_json) or else the holdout's
  kept_accuracy (on the frontier-labelled part of the gold these are the same thing);
- reviewed: with at least `min_shadow_reviewed` reviewed comparisons,
  small_correct_reviewed >= frontier_correct_reviewed - margin * reviewed; fewer: not applicable.
It is re-evaluated on every statistics update, so the minimum counts are what keep an early,
lucky streak from passing it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from scipy.stats import binomtest, norm

from services.common.contracts import ModelRegistered, PairedCounts, ShadowStats
from services.controller.settings import ControllerSettings

Status = Literal["pass", "fail", "pending", "n/a"]
STATS_COUNTS = ("compared", "agreed", "kept", "kept_agreed", "reviewed", "small_correct_reviewed",
                "frontier_correct_reviewed")
TEST_NAME = "Tango score test, paired non-inferiority (one-sided)"
REQUEST = "request"  # the request-level check of a threshold search step (fields: "field:<name>")
# Small model alone this far below the frontier on the holdout: it underfits (5 points: far beyond
# any margin the gate allows, so no holdout size would show non-inferiority of the model itself).
UNDERFIT_GAP = 0.05


# --- statistics ------------------------------------------------------------------------------

def restricted_mle(b: float, c: float, n: float, delta: float) -> float:
    """P(frontier only) maximising the likelihood under p_small - p_frontier = -delta.

    With x = P(frontier only) and P(small only) = x - delta, the score equation is the quadratic
    2n x^2 - (b + c + (2n - b + c) delta) x + c delta (1 + delta) = 0; its larger root is the MLE.
    """
    big_b = b + c + (2 * n - b + c) * delta
    disc = max(big_b * big_b - 8 * n * c * delta * (1 + delta), 0.0)
    x = (big_b + math.sqrt(disc)) / (4 * n)
    return min(max(x, max(0.0, delta)), (1 + delta) / 2)


def score_statistic(b: float, c: float, n: float, margin: float) -> float:
    """Tango's Z for H0: p_small - p_frontier <= -margin (large Z: evidence of non-inferiority)."""
    if n <= 0:
        return 0.0
    x = restricted_mle(b, c, n, margin)
    variance = n * (2 * x - margin - margin * margin)
    numerator = b - c + n * margin
    if variance <= 1e-12:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(variance)


def score_p_value(b: float, c: float, n: float, margin: float) -> float:
    """One-sided p-value of the score test; 1.0 without data."""
    return 1.0 if n <= 0 else float(norm.sf(score_statistic(b, c, n, margin)))


def lower_confidence_bound(b: float, c: float, n: float, alpha: float) -> float:
    """The one-sided (1 - alpha) lower bound of p_small - p_frontier: the smallest difference
    that the score test does not reject (inverting it by bisection)."""
    if n <= 0:
        return -1.0
    hi = (b - c) / n  # not rejected: Z = 0 there
    lo = -1.0 + 1e-12
    if score_p_value(b, c, n, -lo) >= alpha:
        return -1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if score_p_value(b, c, n, -mid) >= alpha:
            hi = mid
        else:
            lo = mid
    return hi


def step_passes(tables: dict[str, dict[str, int]], margin: float, alpha: float) -> tuple[bool, float]:
    """One step of the threshold search: it passes when every check's served table ("request", and
    "field:<name>" for extraction) shows non-inferiority (an intersection-union test); returns
    (passed, the largest p-value)."""
    worst = 0.0
    for table in tables.values():
        n = sum(int(table[k]) for k in ("both_correct", "small_only", "frontier_only", "neither"))
        worst = max(worst, score_p_value(int(table["small_only"]), int(table["frontier_only"]), n, margin))
    return bool(tables) and worst < alpha, worst


def replay(record: dict[str, Any], margin: float, alpha: float) -> tuple[Optional[float], Optional[str]]:
    """The gate's side: re-run a published sequence with the gate's own margin and alpha.

    Returns (the threshold the sequence reaches, None when no step passes; a reason the record
    cannot be trusted, else None)."""
    steps = record.get("steps")
    if not isinstance(steps, list):
        return None, "the threshold search has no steps"
    reached: Optional[float] = None
    previous = float("inf")
    for step in steps:
        try:
            t, tables = float(step["threshold"]), step["tables"]
            if not isinstance(tables, dict) or REQUEST not in tables:
                return None, "a search step has no request table"
            passed, _ = step_passes(tables, margin, alpha)
        except (KeyError, TypeError, ValueError) as e:
            return None, f"a search step is unreadable ({e})"
        if t >= previous:
            return None, "the search steps are not in descending threshold order"
        previous = t
        if not passed:
            break
        reached = t
    return reached, None


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial on the discordant pairs, no margin)."""
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


@dataclass(frozen=True)
class NonInferiority:
    """The offline test's figures on one paired table."""

    n: int
    small_only: int
    frontier_only: int
    margin: float
    alpha: float
    difference: float
    statistic: float
    p_value: float
    lower_bound: float
    mcnemar_p: float

    @property
    def shown(self) -> bool:
        return self.n > 0 and self.p_value < self.alpha

    @property
    def worse_beyond_margin(self) -> bool:
        return self.n > 0 and self.difference <= -self.margin

    def examples_needed(self) -> Optional[int]:
        """Total holdout size at which these rates would pass (None: no size would)."""
        if self.shown:
            return self.n
        if self.n == 0 or self.worse_beyond_margin or self.statistic <= 0:
            return None
        return math.ceil(self.n * (norm.isf(self.alpha) / self.statistic) ** 2)

    def as_evidence(self) -> dict[str, Any]:
        return {"test": TEST_NAME, "n": self.n, "small_only": self.small_only,
                "frontier_only": self.frontier_only, "margin": self.margin, "alpha": self.alpha,
                "difference": round(self.difference, 6), "statistic": _finite(self.statistic),
                "p_value": self.p_value, "lower_bound": round(self.lower_bound, 6),
                "mcnemar_exact_p": self.mcnemar_p}


def noninferiority_test(paired: PairedCounts, margin: float, alpha: float) -> NonInferiority:
    b, c, n = paired.small_only, paired.frontier_only, paired.n
    return NonInferiority(
        n=n, small_only=b, frontier_only=c, margin=margin, alpha=alpha,
        difference=(b - c) / n if n else 0.0, statistic=score_statistic(b, c, n, margin),
        p_value=score_p_value(b, c, n, margin), lower_bound=lower_confidence_bound(b, c, n, alpha),
        mcnemar_p=mcnemar_exact_p(b, c))


def fallback_limit(predicted: float, settings: ControllerSettings) -> float:
    """The fallback rate that counts as a breach of what calibration predicted."""
    return min(1.0, max(predicted * settings.breach_ratio, predicted + settings.breach_min_increase))


def wilson_lower(successes: int, trials: int, alpha: float) -> Optional[float]:
    if trials <= 0:
        return None
    return float(binomtest(successes, trials).proportion_ci(1 - 2 * alpha, method="wilson").low)


def _finite(x: float) -> Optional[float]:
    return round(x, 6) if math.isfinite(x) else (None if math.isnan(x) else (1e9 if x > 0 else -1e9))


# --- verdicts --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    more_needed: Optional[int] = None


@dataclass(frozen=True)
class GateResult:
    gate: Literal["offline", "shadow"]
    task: str
    version: str
    checks: tuple[Check, ...]
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Literal["pass", "refused", "pending"]:
        statuses = {c.status for c in self.checks}
        return "refused" if "fail" in statuses else "pending" if "pending" in statuses else "pass"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if c.status == "fail")

    @property
    def reason(self) -> str:
        if self.passed:
            return f"{self.gate} gate passed for {self.version}: " + "; ".join(
                c.detail for c in self.checks if c.status == "pass")
        word = "refused" if self.verdict == "refused" else "pending"
        return f"{self.gate} gate {word} for {self.version}: " + "; ".join(
            c.detail for c in self.checks if c.status in ("fail", "pending"))

    def as_evidence(self) -> dict[str, Any]:
        return {"gate": self.gate, "verdict": self.verdict, "candidate": self.version, **self.evidence,
                "checks": [asdict(c) for c in self.checks]}


def model_metrics(model: ModelRegistered) -> dict[str, Any]:
    return {"snapshot_id": model.snapshot_id, "holdout_size": model.holdout_size,
            "gold_reviewed": model.gold_reviewed, "gold_frontier": model.gold_frontier,
            "small_accuracy": model.small_accuracy, "frontier_accuracy": model.frontier_accuracy,
            "agreement": model.agreement, "macro_f1": model.macro_f1, "threshold": model.threshold,
            "coverage": model.coverage, "kept_accuracy": model.kept_accuracy,
            "predicted_fallback_rate": model.predicted_fallback_rate, "ece_after": model.ece_after}


def _metrics_json(model: ModelRegistered) -> dict[str, Any]:
    try:
        metrics = json.loads(model.metrics_json or "{}")
    except json.JSONDecodeError:
        return {}
    return metrics if isinstance(metrics, dict) else {}


def threshold_search(model: ModelRegistered, settings: ControllerSettings) -> tuple[Optional[bool], str]:
    """Does the published threshold stand on the trainer's search, replayed with the gate's margin
    and alpha? (True / False / None when there is no record), and why."""
    metrics = _metrics_json(model)
    record = metrics.get("threshold_search")
    if not isinstance(record, dict):
        return None, "no threshold search record (metrics_json.threshold_search): the served table would be " \
                     "flattered by the threshold's selection, so the small model's own table is tested"
    reached, problem = replay(record, settings.margin, settings.alpha)
    if problem:
        return False, f"the threshold search record cannot be replayed: {problem}"
    t = model.threshold
    steps = [s for s in record["steps"] if isinstance(s, dict)]
    if t is None:
        return False, "the search found no threshold whose served answers pass"
    at = next((s for s in steps if abs(float(s["threshold"]) - t) <= 1e-9), None)
    if at is None:
        return False, f"the published threshold {t:.4f} is not one of the searched candidates"
    if reached is None or reached > t + 1e-9:
        stop = "no candidate" if reached is None else f"{reached:.4f}"
        return False, (f"replayed with margin {settings.margin:g} and alpha {settings.alpha:g}, the search stops at "
                       f"{stop}, above the published threshold {t:.4f}")
    served = metrics.get("paired_at_threshold")
    if isinstance(served, dict) and served != at["tables"].get("request"):
        return False, "paired_at_threshold is not the search's table at the published threshold"
    missing = [f for f in extraction_fields(model) or [] if f"field:{f}" not in at["tables"]]
    if missing:
        return False, f"the search did not test field(s) {', '.join(missing)} at the published threshold"
    n_steps = steps.index(at) + 1
    return True, (f"threshold {t:.4f} is reached by the fixed-sequence search: its {n_steps} candidate(s) from the "
                  f"highest down all pass (margin {settings.margin:g}, alpha {settings.alpha:g})")


def served_counts(model: ModelRegistered, settings: ControllerSettings) -> bool:
    """Whether the served tables are the ones tested: the setting says so, there is a threshold
    (without one the served answer is the frontier's, which tells nothing about the model), and
    the registration carries the search that chose it."""
    return (settings.offline_table == "served" and model.threshold is not None
            and threshold_search(model, settings)[0] is not None)


def offline_table(model: ModelRegistered, settings: ControllerSettings) -> tuple[PairedCounts, str]:
    """The paired table the offline gate tests, and its name ("served" or "small")."""
    if served_counts(model, settings):
        served = _metrics_json(model).get("paired_at_threshold")
        if isinstance(served, dict):
            try:
                return PairedCounts(**served), "served"
            except ValueError:
                pass
    return model.paired, "small"


def extraction_fields(model: ModelRegistered) -> Optional[list[str]]:
    """The fields of an extraction model (metrics_json.fields, else its labels); None for any
    other kind."""
    metrics = _metrics_json(model)
    if metrics.get("kind") != "extraction":
        return None
    fields = metrics.get("fields")
    if isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields):
        return list(fields)
    return list(model.labels)


def field_tables(model: ModelRegistered, settings: ControllerSettings) -> dict[str, tuple[Optional[PairedCounts], str]]:
    """Per field of an extraction model: the paired table the offline gate tests and its name
    ("served" or "small"), None where the registration has no readable table for the field."""
    fields = extraction_fields(model) or []
    metrics = _metrics_json(model)
    served = served_counts(model, settings)
    sources = ([("per_field_paired_at_threshold", "served")] if served else []) + [("per_field_paired", "small")]
    out: dict[str, tuple[Optional[PairedCounts], str]] = {}
    for name in fields:
        out[name] = (None, "none")
        for key, which in sources:
            tables = metrics.get(key)
            table = tables.get(name) if isinstance(tables, dict) else None
            if isinstance(table, dict):
                try:
                    out[name] = (PairedCounts(**table), which)
                    break
                except ValueError:
                    continue
    return out


def evaluate_offline(model: ModelRegistered, incumbent: Optional[ModelRegistered],
                     settings: ControllerSettings) -> GateResult:
    """The offline gate for a newly registered version; `incumbent` is the model it would replace."""
    table, which = offline_table(model, settings)
    test = noninferiority_test(table, settings.margin, settings.alpha)
    underfit = underfit_reason(model)
    checks = [_holdout_check(test.n, settings), _threshold_check(model, underfit),
              _noninferiority_check(test, which, underfit)]
    searched, search_detail = threshold_search(model, settings)
    if settings.offline_table == "served" and model.threshold is not None:
        checks.append(Check("threshold_search", "pass" if searched else "n/a" if searched is None else "fail",
                            search_detail))
    field_evidence: dict[str, Any] = {}
    for name, (field_table, field_which) in field_tables(model, settings).items():
        if field_table is None:
            checks.append(Check(f"field:{name}", "fail", f"field {name}: the registration has no paired holdout "
                                "table for this field (metrics_json.per_field_paired), so the gate cannot vouch "
                                "for it"))
            field_evidence[name] = None
            continue
        field_test = noninferiority_test(field_table, settings.margin, settings.alpha)
        checks.append(_field_check(name, field_test, field_which, underfit))
        field_evidence[name] = field_test.as_evidence() | {"table": field_which, "counts": field_table.model_dump()}
    checks.append(_serving_check(model, incumbent, settings))
    evidence = {"statistics": test.as_evidence() | {"table": which}, "counts": table.model_dump(),
                "small_table": noninferiority_test(model.paired, settings.margin, settings.alpha).as_evidence()
                | {"counts": model.paired.model_dump()},
                "metrics": model_metrics(model),
                "incumbent": {"version": incumbent.version, **model_metrics(incumbent)} if incumbent else None}
    if field_evidence:
        evidence["fields"] = field_evidence
    evidence["threshold_search"] = {"replayed": searched, "detail": search_detail}
    if underfit:
        evidence["underfit"] = underfit
    return GateResult("offline", model.task, model.version, tuple(checks), evidence)


def _holdout_check(n: int, settings: ControllerSettings) -> Check:
    if n >= settings.min_holdout:
        return Check("holdout", "pass", f"{n} gold holdout examples (minimum {settings.min_holdout})")
    more = settings.min_holdout - n
    return Check("holdout", "fail", f"too little data: {n} gold holdout examples, the gate needs "
                 f"{settings.min_holdout} ({more} more)", more)


def underfit_reason(model: ModelRegistered) -> Optional[str]:
    """When the small model alone is far below the frontier on the holdout: that it underfits, and
    what the trainer tried (metrics_json.fit); None otherwise."""
    gap = model.frontier_accuracy - model.small_accuracy
    if gap <= UNDERFIT_GAP:
        return None
    text = (f"the small model underfits: holdout accuracy {model.small_accuracy:.1%} vs the frontier's "
            f"{model.frontier_accuracy:.1%} ({100 * gap:.1f} points below, more than {100 * UNDERFIT_GAP:g})")
    metrics = _metrics_json(model)
    fit = metrics.get("fit")
    if isinstance(fit, dict):
        tried = []
        if isinstance(fit.get("epochs_run"), (int, float)) and isinstance(fit.get("epochs"), (int, float)):
            stop = ", stopped early" if fit.get("stopped_early") else ", not stopped early"
            tried.append(f"{fit['epochs_run']:g} of at most {fit['epochs']:g} epochs{stop}")
        if isinstance(fit.get("best_validation_accuracy"), (int, float)):
            tried.append(f"best validation accuracy {fit['best_validation_accuracy']:.1%}")
        elif isinstance(fit.get("validation_accuracy"), (int, float)):
            tried.append(f"validation accuracy {fit['validation_accuracy']:.1%}")
        if isinstance(fit.get("learning_rate"), (int, float)):
            tried.append(f"learning rate {fit['learning_rate']:g}")
        if tried:
            text += "; the trainer tried " + ", ".join(tried)
    text += ("; more gold holdout would not help: train longer or with a recipe suited to the task "
             "(more epochs, learning rate), or with more examples per label")
    review = metrics.get("label_review")
    if isinstance(review, dict) and isinstance(review.get("disputed"), int) and review["disputed"] > 0:
        text += (f"; or check the {review['disputed']} train labels the model disputes (the review page lists "
                 f"them, likeliest frontier errors first): the next run learns from what a person says")
    return text


def _threshold_check(model: ModelRegistered, underfit: Optional[str] = None) -> Check:
    t = model.threshold
    if t is None:
        detail = "no confidence threshold's served answers pass the non-inferiority test"
        return Check("threshold", "fail", f"{detail} ({underfit})" if underfit else detail)
    if not 0.0 <= t <= 1.0:
        return Check("threshold", "fail", f"threshold {t} is outside [0, 1]")
    return Check("threshold", "pass", f"threshold {t:.4f} keeps {model.coverage:.1%} at "
                 f"{model.kept_accuracy:.1%} accuracy (frontier {model.frontier_accuracy:.1%})")


def _noninferiority_check(t: NonInferiority, which: str = "small", underfit: Optional[str] = None) -> Check:
    conf = f"{1 - t.alpha:.0%}"
    side = "small with fallback" if which == "served" else "small"
    figures = (f"{side} - frontier = {t.difference:+.4f} on {t.n} paired examples, {conf} lower bound "
               f"{t.lower_bound:+.4f} vs margin -{t.margin:g} (p = {t.p_value:.3g})")
    if t.n == 0:
        return Check("non_inferiority", "fail", "no paired holdout table")
    if t.shown:
        return Check("non_inferiority", "pass", "non-inferior: " + figures)
    if t.worse_beyond_margin:
        tail = f"; {underfit}" if underfit else ""
        return Check("non_inferiority", "fail", "worse than the frontier beyond the margin: " + figures + tail)
    if underfit:
        return Check("non_inferiority", "fail", "non-inferiority not shown: " + figures + f"; {underfit}")
    needed = t.examples_needed()
    more = needed - t.n if needed is not None else None
    tail = f"; at these rates about {more} more gold holdout examples would show it" if more else ""
    return Check("non_inferiority", "fail", "non-inferiority not shown: " + figures + tail, more)


def _field_check(name: str, t: NonInferiority, which: str, underfit: Optional[str] = None) -> Check:
    """The request-level check's verdict on one field's table, its detail naming the field."""
    check = _noninferiority_check(t, which, underfit)
    return Check(f"field:{name}", check.status, f"field {name}: {check.detail}", check.more_needed)


def _serving_check(model: ModelRegistered, incumbent: Optional[ModelRegistered],
                   settings: ControllerSettings) -> Check:
    if incumbent is None:
        return Check("serving", "n/a", "no model of this task to compare with")
    floor = incumbent.small_accuracy - settings.serving_tolerance
    figures = (f"holdout accuracy {model.small_accuracy:.4f} vs {incumbent.version}'s "
               f"{incumbent.small_accuracy:.4f}")
    if model.small_accuracy + 1e-12 >= floor:
        return Check("serving", "pass", f"not worse than {incumbent.version}: {figures}")
    return Check("serving", "fail", f"worse than {incumbent.version}, which it would replace: {figures}")


def expected_kept_agreement(model: ModelRegistered) -> tuple[float, str]:
    """The holdout's agreement with the frontier at the threshold, and where the figure came from."""
    metrics = _metrics_json(model)
    for where in (metrics, metrics.get("threshold") if isinstance(metrics.get("threshold"), dict) else {}):
        value = where.get("kept_agreement") if isinstance(where, dict) else None
        if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
            return float(value), "metrics_json.kept_agreement"
    return model.kept_accuracy, "kept_accuracy"


def stats_counts(stats: Optional[ShadowStats]) -> dict[str, int]:
    return {k: getattr(stats, k) for k in STATS_COUNTS} if stats else {k: 0 for k in STATS_COUNTS}


def since_baseline(stats: ShadowStats, baseline: Optional[dict[str, int]]) -> dict[str, int]:
    """The judge's running totals minus those at the start of this shadow period (a judge that
    restarted its totals, i.e. any negative difference, counts from zero)."""
    now = stats_counts(stats)
    if not baseline:
        return now
    delta = {k: now[k] - int(baseline.get(k, 0)) for k in STATS_COUNTS}
    return now if any(v < 0 for v in delta.values()) else delta


def evaluate_shadow(stats: ShadowStats, model: ModelRegistered, baseline: Optional[dict[str, int]],
                    settings: ControllerSettings, predicted: Optional[float] = None) -> GateResult:
    """The shadow gate for the version in shadow, on the comparisons since `baseline`; `predicted`:
    the fallback rate the shadow decision holds it to (default: the model's, from its holdout)."""
    n = since_baseline(stats, baseline)
    expected, source = expected_kept_agreement(model)
    predicted = model.predicted_fallback_rate if predicted is None else predicted
    limit = fallback_limit(predicted, settings)
    evidence: dict[str, Any] = {
        "counts": n, "cumulative": stats_counts(stats), "baseline": baseline or None,
        "threshold": model.threshold, "stats_threshold": stats.threshold,
        "agreement": _ratio(n["agreed"], n["compared"]), "kept_agreement": _ratio(n["kept_agreed"], n["kept"]),
        "kept_agreement_lower": wilson_lower(n["kept_agreed"], n["kept"], settings.alpha),
        "expected_kept_agreement": expected, "expected_source": source,
        "shadow_fallback_rate": _ratio(n["compared"] - n["kept"], n["compared"]),
        "predicted_fallback_rate": predicted, "fallback_limit": limit, "margin": settings.margin,
        "metrics": model_metrics(model)}
    if n["compared"] < settings.min_shadow_comparisons:
        more = settings.min_shadow_comparisons - n["compared"]
        checks = (Check("comparisons", "pending", f"{n['compared']} live comparisons, the gate needs "
                        f"{settings.min_shadow_comparisons} ({more} more)", more),)
        return GateResult("shadow", stats.task, stats.model_version, checks, evidence)
    checks = (Check("comparisons", "pass", f"{n['compared']} live comparisons"),
              _threshold_check(model),
              _shadow_fallback_check(n, predicted, limit),
              _agreement_check(n, expected, source, settings),
              _reviewed_check(n, settings))
    return GateResult("shadow", stats.task, stats.model_version, checks, evidence)


def traffic_prediction(model: ModelRegistered, mix: dict[str, int]) -> tuple[Optional[float], Optional[dict[str, Any]]]:
    """The fallback rate `model` would have on traffic with the label mix `mix` (label -> inputs the
    frontier answered so), from its holdout's fallback rate per frontier label at the threshold
    (metrics_json.fallback_by_label: label -> [items, fell back]); a label without holdout items
    counts at the model's overall rate. None without the per-label figures or a mix."""
    by_label = _metrics_json(model).get("fallback_by_label")
    total = sum(mix.values())
    if not isinstance(by_label, dict) or not total:
        return None, None
    overall, rate, unseen = model.predicted_fallback_rate, 0.0, 0
    for label, n in mix.items():
        held = by_label.get(label)
        if isinstance(held, list) and len(held) == 2 and held[0]:
            rate += n * held[1] / held[0]
        else:
            rate += n * overall
            unseen += n
    predicted = round(rate / total, 4)
    return predicted, {"predicted_fallback_rate": predicted, "holdout_predicted_fallback_rate": overall,
                       "basis": "holdout fallback rate per label, weighted by the frontier's answers since the drift",
                       "inputs_since_drift": total, "inputs_of_labels_without_holdout_items": unseen}


def _ratio(a: int, b: int) -> Optional[float]:
    return a / b if b else None


def _shadow_fallback_check(n: dict[str, int], predicted: float, limit: float) -> Check:
    rate = (n["compared"] - n["kept"]) / n["compared"]
    figures = f"live fallback rate {rate:.3f} (predicted {predicted:.3f}, limit {limit:.3f})"
    return Check("fallback", "pass" if rate <= limit else "fail",
                 figures if rate <= limit else "falls back far more than calibration predicted: " + figures)


def _agreement_check(n: dict[str, int], expected: float, source: str, settings: ControllerSettings) -> Check:
    if n["kept"] < settings.min_shadow_kept:
        compared, kept = n["compared"], n["kept"]
        more = (math.ceil((settings.min_shadow_kept - kept) * compared / kept) if kept
                else settings.min_shadow_comparisons)
        return Check("agreement", "pending", f"{kept} comparisons at or above the threshold, the agreement "
                     f"check needs {settings.min_shadow_kept} (about {more} more comparisons)", more)
    rate = n["kept_agreed"] / n["kept"]
    floor = expected - settings.margin
    figures = (f"agreement at the threshold {rate:.4f} on {n['kept']} kept vs holdout {expected:.4f} "
               f"({source}) - margin {settings.margin:g}")
    if rate + 1e-12 >= floor:
        return Check("agreement", "pass", figures)
    return Check("agreement", "fail", "disagrees with the frontier more than on the holdout: " + figures)


def _reviewed_check(n: dict[str, int], settings: ControllerSettings) -> Check:
    r = n["reviewed"]
    if r < settings.min_shadow_reviewed:
        return Check("reviewed", "n/a", f"{r} reviewed comparisons (< {settings.min_shadow_reviewed}), "
                     "not graded against reviewed labels")
    s, f = n["small_correct_reviewed"], n["frontier_correct_reviewed"]
    figures = f"on {r} reviewed: small right {s}, frontier right {f}, margin {settings.margin:g}"
    if s + 1e-9 >= f - settings.margin * r:
        return Check("reviewed", "pass", figures)
    return Check("reviewed", "fail", "less accurate than the frontier on reviewed labels: " + figures)
