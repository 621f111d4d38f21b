"""bench/bench_quality.py's pure parts: a task left out keeps its last figures; the coverage ceiling."""
from __future__ import annotations

import json

import numpy as np

from tests.support import load_bench_script


def load_bench_quality():
    return load_bench_script("bench_quality")


def test_a_task_left_out_keeps_its_last_figures_and_when(tmp_path):
    bq = load_bench_quality()
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"when": "T0", "tasks": [{"task": "banking77-intent", "x": 1},
                                                         {"task": "restaurant8k-booking", "x": 2}]}))
    merged = bq.carry_other_tasks([{"task": "hwu64-intent", "x": 3, "when": "T1"},
                                   {"task": "banking77-intent", "x": 4, "when": "T1"}], path)
    assert [r["task"] for r in merged] == ["banking77-intent", "hwu64-intent", "restaurant8k-booking"]
    assert merged[0] == {"task": "banking77-intent", "x": 4, "when": "T1"}  # this run's, not the file's
    assert merged[2] == {"task": "restaurant8k-booking", "x": 2, "when": "T0"}
    assert bq.carry_other_tasks([{"task": "hwu64-intent"}], tmp_path / "none.json") == [{"task": "hwu64-intent"}]


def test_the_ceiling_makes_the_model_as_accurate_as_the_frontier_and_never_covers_less():
    bq = load_bench_quality()
    rng = np.random.default_rng(1)
    n = 900
    conf = rng.random(n)
    small_ok = rng.random(n) < 0.75 + 0.25 * conf  # right more often when confident, ~0.875 overall
    frontier_ok = rng.random(n) < 0.93
    out = bq.coverage_ceiling(conf, small_ok, frontier_ok, draws=5)
    ceiling = out["at_frontier_accuracy"]
    assert ceiling["answers_made_right"] == int(frontier_ok.sum()) - int(small_ok.sum()) > 0
    # making wrong answers right can only help every step of the fixed sequence
    assert ceiling["search_coverage_min"] >= out["search_coverage"]
    assert ceiling["search_coverage_median"] > out["search_coverage"]
    better = bq.coverage_ceiling(conf, frontier_ok | small_ok, frontier_ok, draws=2)  # already above the frontier
    assert better["at_frontier_accuracy"]["answers_made_right"] == 0
    assert better["at_frontier_accuracy"]["search_coverage_median"] == better["search_coverage"]
