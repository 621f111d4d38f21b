"""`graduate shadow-report`: the judge's latest statistics per model version of a task.

Reads the compacted stats topic from the beginning (no consumer group) and keeps the last
record per task/version; the figures are derived here, the counts are the judge's.
"""
from __future__ import annotations

import json

from rich.console import Group as RichGroup
from rich.table import Table

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import ShadowStats, version_key
from services.common.settings import KafkaSettings
from services.common.reader import replay_topic


async def read_latest_stats(kafka: KafkaSettings, codec: Codec, namespace: str,
                            task: str | None = None) -> list[ShadowStats]:
    """The last ShadowStats per task/version (of `task` when given), sorted by task and version."""
    replay = await replay_topic(kafka, codec, catalog.SHADOW_STATS, namespace, ShadowStats, missing_ok=False)
    latest = {f"{i.value.task}/{i.value.model_version}": i.value for i in replay.records}
    return sorted((s for s in latest.values() if task is None or s.task == task),
                  key=lambda s: (s.task, version_key(s.model_version)))


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summary(s: ShadowStats) -> dict:
    """The counts and the rates the controller and people read off them."""
    return {
        "task": s.task, "model_version": s.model_version, "ts": s.ts.isoformat(), "threshold": s.threshold,
        "compared": s.compared, "agreed": s.agreed, "agreement": _rate(s.agreed, s.compared),
        "kept": s.kept, "kept_agreed": s.kept_agreed, "coverage": _rate(s.kept, s.compared),
        "kept_agreement": _rate(s.kept_agreed, s.kept),
        "reviewed": s.reviewed, "small_accuracy_reviewed": _rate(s.small_correct_reviewed, s.reviewed),
        "frontier_accuracy_reviewed": _rate(s.frontier_correct_reviewed, s.reviewed),
        "small_correct_reviewed": s.small_correct_reviewed, "frontier_correct_reviewed": s.frontier_correct_reviewed,
        "paired": s.paired.model_dump(),
        "confusion_pairs": json.loads(s.confusion_json or "{}").get("pairs", []),
        "fields": field_summary(s),
    }


def field_summary(s: ShadowStats) -> dict[str, dict]:
    """An extraction task's per-field counts (ShadowStats.confusion_json["fields"]) with their rates."""
    fields = json.loads(s.confusion_json or "{}").get("fields", {})
    return {name: c | {"agreement": _rate(c.get("agreed", 0), c.get("compared", 0)),
                       "kept_agreement": _rate(c.get("kept_agreed", 0), c.get("kept", 0)),
                       "small_accuracy_reviewed": _rate(c.get("small_correct_reviewed", 0), c.get("reviewed", 0)),
                       "frontier_accuracy_reviewed": _rate(c.get("frontier_correct_reviewed", 0), c.get("reviewed", 0))}
            for name, c in fields.items()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def render(task: str, stats: list[ShadowStats]) -> RichGroup:
    table = Table(title=f"shadow report: {task}", caption="accuracy is against reviewed labels only; "
                                                          "agreement is with the frontier's answer")
    for col in ("version", "threshold", "compared", "agreement", "coverage", "kept agreement", "reviewed",
                "small acc.", "frontier acc.", "both / small only / frontier only / neither", "updated"):
        table.add_column(col, justify="right" if col not in ("version", "updated") else "left")
    confusion = []
    for s in stats:
        d = summary(s)
        p = s.paired
        table.add_row(s.model_version, "-" if s.threshold is None else f"{s.threshold:.3f}", str(s.compared),
                      _pct(d["agreement"]), _pct(d["coverage"]), _pct(d["kept_agreement"]), str(s.reviewed),
                      _pct(d["small_accuracy_reviewed"]), _pct(d["frontier_accuracy_reviewed"]),
                      f"{p.both_correct} / {p.small_only} / {p.frontier_only} / {p.neither}",
                      s.ts.strftime("%Y-%m-%d %H:%M:%S"))
        if d["fields"]:
            per_field = Table(title=f"agreement per field, version {s.model_version}")
            for col in ("field", "compared", "agreement", "kept agreement", "reviewed", "small acc.", "frontier acc."):
                per_field.add_column(col, justify="left" if col == "field" else "right")
            for name, f in d["fields"].items():
                per_field.add_row(name, str(f["compared"]), _pct(f["agreement"]), _pct(f["kept_agreement"]),
                                  str(f["reviewed"]), _pct(f["small_accuracy_reviewed"]),
                                  _pct(f["frontier_accuracy_reviewed"]))
            confusion.append(per_field)
        if d["confusion_pairs"]:
            pairs = Table(title=f"top disagreements, version {s.model_version}")
            for col in ("frontier said", "small said", "count"):
                pairs.add_column(col, justify="right" if col == "count" else "left")
            for pair in d["confusion_pairs"]:
                pairs.add_row(pair["frontier"], pair["small"], str(pair["count"]))
            confusion.append(pairs)
    return RichGroup(table, *confusion)
