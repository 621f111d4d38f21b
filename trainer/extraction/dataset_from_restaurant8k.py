"""Build a dataset snapshot straight from data/restaurant8k (until the curator's snapshots exist).

Restaurant-8k's spans are the gold. The "frontier" labels are the simulated frontier's JSON
answers (`services.frontier_sim.extraction`, never a real model; the same oracle and seed as the
simulator, so a snapshot and the simulator agree answer for answer): per-field error rates,
deterministic per input. Malformed answers are dropped, as the curator drops parse failures. A
share of the holdout, picked by input hash, is "reviewed": its label is the gold JSON; every
other label is the frontier's. train_0.json becomes train and test.json the holdout,
deduplicated by normalised input; labels are the task's canonical JSON (`parse_fields`), and the
manifest's label list is the distinct labels, as the curator writes it for an extraction task.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from services.common.normalize import input_hash, normalise_input
from services.common.tasks import TaskSpec
from services.frontier_sim.extraction import ExtractionOracle, SpanExample, fields_json, read_span_file
from services.frontier_sim.settings import DEFAULT_FIELD_ERROR_RATES
from trainer.snapshot import Split, write_snapshot

FRONTIER_SEED = 0
FRONTIER_MALFORMED_RATE = 0.005  # the simulator's default (GRADUATE_SIM_EXTRACTION_MALFORMED_RATE)


def _unit(task: str, text: str, purpose: str) -> float:
    digest = hashlib.sha256(f"{purpose}\x00".encode() + input_hash(task, normalise_input(text))).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _sample(task: str, examples: list[SpanExample], cap: Optional[int]) -> list[SpanExample]:
    """At most `cap` examples, a stable hash-ordered choice (the files are grouped by slot)."""
    if cap is None or len(examples) <= cap:
        return examples
    return sorted(examples, key=lambda e: _unit(task, e.text, "sample"))[:cap]


def _dedupe(task: str, examples: list[SpanExample], exclude: set[str]) -> tuple[list[SpanExample], list[str]]:
    kept, hashes = [], []
    for e in examples:
        h = input_hash(task, normalise_input(e.text)).hex()
        if h not in exclude:
            exclude.add(h)
            kept.append(e)
            hashes.append(h)
    return kept, hashes


def build_restaurant8k_snapshot(datasets_dir: Path, spec: TaskSpec, data_dir: Path, *,
                                snapshot_id: Optional[str] = None, max_train: Optional[int] = None,
                                max_holdout: Optional[int] = None, reviewed_share: float = 0.3,
                                error_rates: Optional[dict[str, float]] = None,
                                frontier_seed: int = FRONTIER_SEED,
                                malformed_rate: float = FRONTIER_MALFORMED_RATE) -> Path:
    """Write a snapshot of Restaurant-8k with simulated frontier JSON labels and a reviewed share."""
    if spec.kind != "extraction":
        raise ValueError(f"task {spec.name} is {spec.kind}, not extraction")
    if not 0.0 <= reviewed_share <= 1.0:
        raise ValueError(f"reviewed_share must be in [0, 1], got {reviewed_share}")
    task, names = spec.name, [f.name for f in spec.fields]
    train_rows, test_rows = read_span_file(data_dir / "train_0.json"), read_span_file(data_dir / "test.json")
    rates = {k: v for k, v in (DEFAULT_FIELD_ERROR_RATES | (error_rates or {})).items() if k in names}
    oracle = ExtractionOracle(task, spec.fields, train_rows + test_rows, error_rates=rates, seed=frontier_seed,
                              malformed_rate=malformed_rate)
    seen: set[str] = set()
    train_rows, train_hashes = _dedupe(task, _sample(task, train_rows, max_train), seen)
    n_test = len(_sample(task, test_rows, max_holdout))
    test_rows, test_hashes = _dedupe(task, _sample(task, test_rows, max_holdout), seen)

    verdicts = {h: oracle.answer(e.text) for h, e in zip(train_hashes + test_hashes, train_rows + test_rows)}
    malformed = {h for h, v in verdicts.items() if v.malformed}
    keep_train = [i for i, h in enumerate(train_hashes) if h not in malformed]
    keep_test = [i for i, h in enumerate(test_hashes) if h not in malformed]

    def frontier(h: str) -> str:
        return fields_json(verdicts[h].values, names)

    def gold(h: str) -> str:
        return fields_json(verdicts[h].gold or {}, names)

    th = [train_hashes[i] for i in keep_train]
    train = Split([f"r8k-train-{h[:16]}" for h in th], [train_rows[i].text for i in keep_train],
                  [frontier(h) for h in th], [frontier(h) for h in th], [False] * len(th), th)
    hh = [test_hashes[i] for i in keep_test]
    texts = [test_rows[i].text for i in keep_test]
    reviewed = [_unit(task, t, "reviewed") < reviewed_share for t in texts]
    holdout = Split([f"r8k-holdout-{h[:16]}" for h in hh], texts,
                    [gold(h) if r else frontier(h) for h, r in zip(hh, reviewed)], [frontier(h) for h in hh],
                    reviewed, hh)
    report = _frontier_report(oracle, verdicts, malformed, frontier_seed)
    source = {"generator": "trainer.extraction.dataset_from_restaurant8k", "data": str(data_dir), "fields": names,
              "frontier": report, "reviewed_share": reviewed_share, "max_train": max_train, "max_holdout": max_holdout,
              "holdout_dropped_as_duplicates": n_test - len(test_rows)}
    labels = sorted(set(train.label) | set(holdout.label))
    content = hashlib.sha256("".join(th + hh).encode()).hexdigest()[:8]
    snapshot_id = snapshot_id or f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-r8k-{content}"
    return write_snapshot(datasets_dir, task, snapshot_id, labels, train, holdout, source)


def _frontier_report(oracle: ExtractionOracle, verdicts: dict, malformed: set[str], seed: int) -> dict[str, Any]:
    present = {f: 0 for f in oracle.names}
    wrong = {f: 0 for f in oracle.names}
    for v in verdicts.values():
        for f, g in (v.gold or {}).items():
            if g is not None:
                present[f] += 1
                wrong[f] += v.values[f] != g
    return {"kind": "simulated frontier (services.frontier_sim.extraction; not a real model)", "seed": seed,
            "configured_error_rates": oracle.error_rates,
            "realised_error_rates": {f: wrong[f] / present[f] if present[f] else None for f in oracle.names},
            "realised_exact_match": sum(not v.wrong for v in verdicts.values()) / max(len(verdicts), 1),
            "malformed_dropped": len(malformed)}
