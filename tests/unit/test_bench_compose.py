"""bench/run_all.py composes RESULTS.md and marks results that the run did not re-measure as stale."""
from __future__ import annotations

import json
import os

from tests.support import load_bench_script


def load_run_all():
    return load_bench_script("run_all")


def test_results_not_rewritten_by_this_run_are_marked_stale(tmp_path, monkeypatch):
    run_all = load_run_all()
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    old, new = results / "old.json", results / "new.json"
    old.write_text(json.dumps({"benchmark": "old one", "when": "2026-11-28T10:36:09+00:00", "ratios": {"a_ratio": 1.5}}))
    new.write_text(json.dumps({"benchmark": "new one", "ratios": {"b_ratio": 0.5}}))
    since = new.stat().st_mtime - 10
    os.utime(old, (since - 3600, since - 3600))

    text = run_all.compose([], since).read_text()

    stale = "STALE: not re-measured by this run (measured 2026-11-28T10:36:09+00:00)"
    assert f"## old: old one — {stale}" in text and f"| old | ratios: a_ratio | 1.5 — {stale} |" in text
    assert "## new: new one\n" in text and "| new | ratios: b_ratio | 0.5 |" in text
    assert "STALE" not in run_all.compose([], None).read_text()  # compose-only with no run: nothing to compare
