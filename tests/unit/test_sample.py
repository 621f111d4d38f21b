"""The bounded input sample: bounded, agreeing across partitions, exact under its cap."""
from __future__ import annotations

import hashlib

from hypothesis import given, settings, strategies as st

from services.common import sample


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sampled(calls, cap: int) -> tuple[dict, float]:
    entries, share = {}, 1.0
    for text, answer in calls:
        h = digest(text)
        if sample.kept(h, share):
            sample.note(entries, h, answer)
            share = sample.shrink(entries, share, cap)
    return entries, share


calls_strategy = st.lists(st.tuples(st.integers(0, 400).map(str), st.sampled_from(["a", "b", None])), max_size=600)


@settings(max_examples=60, deadline=None)
@given(calls_strategy, st.integers(0, 3))
def test_two_partitions_merged_keep_the_inputs_one_sample_of_everything_keeps(calls, split):
    cap = 40
    left, right = calls[split::4], [c for i, c in enumerate(calls) if i % 4 != split]
    (a, share_a), (b, share_b) = sampled(left, cap), sampled(right, cap)
    merged_share = sample.merge(a, share_a, b, share_b, 2 * cap)
    whole, whole_share = sampled(calls, 2 * cap)
    assert len(a) <= 2 * cap
    share = min(merged_share, whole_share)
    kept_merged = {h for h in a if sample.kept(h, share)}
    kept_whole = {h for h in whole if sample.kept(h, share)}
    assert kept_merged == kept_whole  # the hash decides: partitions agree on which inputs they keep


def test_exact_under_the_cap_and_conflicts_found():
    entries, share = sampled([("x", "a"), ("x", "b"), ("y", "a"), ("y", "a"), ("z", None)], cap=10)
    assert share == 1.0 and len(entries) == 3
    assert entries[digest("x")] == ["a", 1, 2] and entries[digest("y")] == ["a", 0, 2]
    assert entries[digest("z")] == [None, 0, 0]


def test_bounded_whatever_the_number_of_inputs():
    entries, share = sampled(((str(i), "a") for i in range(50_000)), cap=100)
    assert len(entries) <= 100 and share < 0.01
    assert abs(len(entries) / share - 50_000) < 50_000 * 0.35
