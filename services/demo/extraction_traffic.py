"""The extraction demo's traffic, planned up front from Restaurant-8k: which utterances are sent when.

Restaurant-8k's own spans are the gold (as the task's canonical JSON). Capture replays distinct
train_0.json utterances; shadow and small mode replay distinct utterances that were never captured,
so the live figures are on inputs the model never saw: by default the rest of train_0.json (the
distribution the holdout, and so the gate's expectations, come from), or test.json (`live_source`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.common.contracts import new_id
from services.common.normalize import normalise_input
from services.demo.traffic import PlannedCall
from services.frontier_sim.extraction import SpanExample, fields_json, read_span_file


@dataclass(frozen=True)
class ExtractionPlan:
    capture: list[PlannedCall]  # before any model: train_0.json utterances (frontier mode, captured)
    shadow: list[PlannedCall]  # never-captured utterances while the model shadows
    small: list[PlannedCall]  # never-captured utterances in small mode
    available: dict[str, int]  # distinct utterances in each file


def distinct(examples: Sequence[SpanExample]) -> list[SpanExample]:
    seen: set[str] = set()
    out = []
    for e in examples:
        key = normalise_input(e.text)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def calls_of(examples: Sequence[SpanExample], task: str, phase: str, fields: Sequence[str]) -> list[PlannedCall]:
    return [PlannedCall(new_id(), task, phase, e.text, fields_json(e.values(fields), fields)) for e in examples]


def plan_extraction_traffic(data_dir: Path, task: str, fields: Sequence[str], *, capture_calls: int,
                            shadow_calls: int, small_calls: int, seed: int, live_source: str = "train") -> ExtractionPlan:
    rng = random.Random(seed)
    train = distinct(read_span_file(Path(data_dir) / "train_0.json"))
    rng.shuffle(train)
    capture = train[:capture_calls]
    captured_keys = {normalise_input(e.text) for e in capture}
    test = [e for e in distinct(read_span_file(Path(data_dir) / "test.json"))
            if normalise_input(e.text) not in captured_keys]
    rng.shuffle(test)
    live = train[capture_calls:] if live_source == "train" else test
    return ExtractionPlan(capture=calls_of(capture, task, "capture", fields),
                          shadow=calls_of(live[:shadow_calls], task, "shadow", fields),
                          small=calls_of(live[shadow_calls:shadow_calls + small_calls], task, "small", fields),
                          available={"train_0.json": len(train), "test.json": len(test),
                                     "live_source": "train_0.json" if live_source == "train" else "test.json",
                                     "live_available": len(live)})
