"""The dataset records: folded per shard and merged, they give the same Dataset as the calls themselves."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from services.common.contracts import CapturedCall, DatasetRecord, ReviewedLabel
from services.curator.dataset import MAX_ANSWERS, MAX_RECENT, dataset_of, fold_calls, merge_shards, to_entry, to_record
from services.curator.logic import build_dataset, curate_call

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
TASK = "banking77-intent"
TEXTS = ["where is my card", "Where is  my card", "top up failed", "change my pin", "card arrival?", "refund please"]
LABELS = ["card_arrival", "top_up_failed", "change_pin", None]


def fold(calls: list[tuple[int, int, CapturedCall]], fraction: float = 0.3) -> dict[tuple[int, str], dict]:
    return fold_calls((shard, offset, curate_call(call, fraction)) for shard, offset, call in calls)


def traffic(seed: int, n: int) -> list[tuple[int, int, CapturedCall]]:
    rng = random.Random(seed)
    offsets = [0] * 3
    out = []
    for i in range(n):
        shard = rng.randrange(3)
        label = rng.choice(LABELS)
        call = CapturedCall(call_id=f"c{i}", task=TASK, ts=T0 + timedelta(seconds=rng.randrange(100)),
                            input=rng.choice(TEXTS), output_raw=label or "??", output=label, parse_ok=label is not None,
                            latency_ms=1.0)
        out.append((shard, offsets[shard], call))
        offsets[shard] += 1
    return out


def comparable(ds) -> tuple:
    return ([(e.call_id, e.input, e.label, e.frontier_label, e.reviewed, e.normalised_hash, e.split, e.call_ids,
              e.ts_ms) for e in ds.examples], ds.stats, ds.reviewed_applied, ds.excluded_by_review, ds.label_counts)


@hsettings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(0, 3))
def test_merged_shards_give_the_same_dataset_as_the_calls(seed, n, n_reviews):
    calls = traffic(seed, n)
    rng = random.Random(seed)
    reviews = {}
    for _, _, c in rng.sample(calls, min(n_reviews, len(calls))):
        verdict = rng.choice(["label", "label", "not_in_label_set", "skip"])
        reviews[c.call_id] = ReviewedLabel(call_id=c.call_id, task=TASK, verdict=verdict, reviewer="r",
                                           label="change_pin" if verdict == "label" else None,
                                           ts=T0 + timedelta(seconds=rng.randrange(100)))
    records = [to_record(e) for e in fold(calls).values()]
    new = dataset_of(TASK, merge_shards(records).values(), reviews, 0.3)
    old = build_dataset(TASK, [curate_call(c, 0.3) for _, _, c in calls], reviews)
    assert comparable(new) == comparable(old)


def test_a_replay_or_a_resend_counts_nothing_twice():
    calls = traffic(7, 40)
    once = fold(calls)
    # the curator restarts from an older checkpoint: the first 25 calls are read again, then the rest
    replayed = fold(calls + calls[:25] + calls[25:])
    assert replayed == once
    # the same call_id published again at a new offset (a client resending)
    shard, offset, call = calls[-1]
    again = fold(calls + [(shard, 1_000, call)])
    assert {k: e["calls"] for k, e in again.items()} == {k: e["calls"] for k, e in once.items()}


def test_answers_are_capped_and_the_overflow_still_marks_a_conflict():
    calls = [(0, i, CapturedCall(call_id=f"c{i}", task=TASK, ts=T0, input="same", output_raw=f"l{i}",
                                 output=f"l{i}", latency_ms=1.0)) for i in range(MAX_ANSWERS + 3)]
    (entry,) = fold(calls).values()
    assert len(entry["answers"]) == MAX_ANSWERS and entry["answers_overflow"] and entry["calls"] == MAX_ANSWERS + 3
    (merged,) = merge_shards([to_record(entry)]).values()
    assert merged.conflict


def test_records_round_trip_through_the_contract(codec):
    (entry, *_) = fold(traffic(3, 10)).values()
    record = to_record(entry)
    assert to_entry(codec.decode(codec.encode(record), type(record))) == entry


def test_the_shard_files_fold_batches_as_the_pure_fold_does_and_skip_forgotten_inputs(tmp_path, codec):
    from services.curator.dataset import record_key
    from services.curator.shards import ShardStore, read_entries, write_dataset

    calls = traffic(11, 120)
    store = ShardStore(tmp_path)
    for shard in range(3):
        store.reset(shard)
    curated = [(shard, offset, curate_call(c, 0.3)) for shard, offset, c in calls]
    forgotten = {record_key(TASK, curated[0][2].normalised_hash)}
    sent = {}
    for start in range(0, len(curated), 7):  # batches of 7 records, each partition's part apart
        for shard in range(3):
            part = [(c, o) for s, o, c in curated[start:start + 7] if s == shard]
            for e in write_dataset(store, codec, forgotten, shard, part):
                assert e.partition == shard and e.spec.name == "graduate.dataset"
                sent[(shard, e.key)] = codec.decode(e.value, DatasetRecord)
    want = {k: e for k, e in fold_calls(curated).items() if k[1] not in forgotten}
    assert {k: to_entry(v) for k, v in sent.items()} == want
    held = {(s, k): v for s in range(3) for k, v in store.get_many(s, [k for _, k in want]).items()}
    assert {k: codec.encode(v) for k, v in sent.items()} == held  # the file keeps the bytes sent
    assert {(s, k): e for s in range(3) for k, e in read_entries(codec, {k: v for (t, k), v in held.items()
                                                                         if t == s}).items()} == want
    # replayed batches send nothing and change nothing
    for shard in range(3):
        assert write_dataset(store, codec, forgotten, shard, [(c, o) for s, o, c in curated if s == shard]) == []
    store.delete(next(iter(want))[1])
    assert sum(store.count(s) for s in range(3)) < len(want)


def test_an_entry_encodes_to_the_same_bytes_as_its_record(codec):
    encode = codec.fields_encoder(DatasetRecord)  # the curator's bound encoder (timestamps as epoch ms)
    for entry in fold(traffic(5, 30)).values():
        assert codec.encode_fields(DatasetRecord, entry) == codec.encode(to_record(entry)) == encode(entry)


def test_the_fields_decoder_gives_back_the_entry_the_bound_encoder_wrote(codec):
    """The curator's shard files keep the records' bytes and read entries back with
    `Codec.fields_decoder`: plain values, timestamps in epoch ms, the same dict as the fold's."""
    from services.common.codec import CodecError

    encode, read = codec.fields_encoder(DatasetRecord), codec.fields_decoder(DatasetRecord)
    for entry in fold(traffic(5, 30)).values():
        data = encode(entry)
        assert read(data) == entry and read(bytearray(data)) == entry
        assert list(read(data)) == list(entry)
    other = codec.encode(CapturedCall(call_id="x", task=TASK, ts=T0, input="hi", output_raw="a", latency_ms=1.0))
    for bad in (data[:-1], data + b"\x00", data[:9], b"{}", other):
        with pytest.raises(CodecError) as want:
            codec.decode(bad, DatasetRecord)
        with pytest.raises(CodecError) as got:
            read(bad)
        assert str(got.value) == str(want.value)


def test_the_bound_encoder_refuses_a_datetime_where_the_schema_has_a_timestamp(codec):
    from services.common.codec import CodecError

    entry = next(iter(fold(traffic(5, 3)).values()))
    with pytest.raises(CodecError, match="DatasetRecord"):
        codec.fields_encoder(DatasetRecord)({**entry, "kept_ts": T0})


def test_a_review_of_an_old_call_of_a_frequent_input_is_kept_when_it_carries_the_input_hash():
    calls = [(0, i, CapturedCall(call_id=f"c{i}", task=TASK, ts=T0 + timedelta(seconds=i), input="where is my card",
                                 output_raw="card_arrival", output="card_arrival", latency_ms=1.0))
             for i in range(MAX_RECENT + 10)]
    (entry,) = fold(calls).values()
    assert "c0" not in entry["recent_call_ids"]  # the reviewed call fell out of the record's latest ids
    (merged,) = merge_shards([to_record(entry)]).values()

    def review(**extra) -> ReviewedLabel:
        return ReviewedLabel(call_id="c0", task=TASK, label="card_delivery_estimate", reviewer="r", ts=T0, **extra)

    unmatched = dataset_of(TASK, [merged], {"c0": review()}, 0.3)
    assert not unmatched.examples[0].reviewed and unmatched.reviewed_applied == 0
    ds = dataset_of(TASK, [merged], {"c0": review(normalised_hash=merged.normalised_hash)}, 0.3)
    (example,) = ds.examples
    assert example.reviewed and example.label == "card_delivery_estimate" and example.frontier_label == "card_arrival"
    assert ds.reviewed_applied == 1
    # a newer review of another of its calls wins; a newer 'skip' does not count
    newer = ReviewedLabel(call_id=f"c{MAX_RECENT + 9}", task=TASK, label="card_arrival", reviewer="r",
                          ts=T0 + timedelta(hours=1))
    skip = ReviewedLabel(call_id="c1", task=TASK, verdict="skip", reviewer="r", ts=T0 + timedelta(hours=2),
                         normalised_hash=merged.normalised_hash)
    both = {"c0": review(normalised_hash=merged.normalised_hash), newer.call_id: newer, "c1": skip}
    assert dataset_of(TASK, [merged], both, 0.3).examples[0].label == "card_arrival"
    # a hash of another task's input applies to nothing here
    other = {"c0": ReviewedLabel(call_id="c0", task="other", label="x", reviewer="r", ts=T0,
                                 normalised_hash=merged.normalised_hash)}
    assert not dataset_of(TASK, [merged], other, 0.3).examples[0].reviewed
