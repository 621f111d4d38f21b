"""The curator's and the profiler's results on a fixed batch, pinned: speed work on their per-record
path (decode, admission, caches) must not change what they admit, refuse, count or profile.

The batch is real-looking captured calls (Banking77 texts, repeated, re-cased and re-spaced; PII the
producer left in; long inputs; answers that do not parse, differ in case or are JSON; unknown tasks,
odd call_ids, empty inputs), Avro-encoded and decoded the way the batch processor does, then handed to
the profiler's step and the curator's per-record path (admission, curation, tally, refusals).
tests/unit/data/processors_pinned.json holds what the code gave before the speed work; regenerate it
only for an intended change of results:

    .venv/bin/python -m tests.unit.test_processors_pinned
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import zlib
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

from services.common import catalog
from services.common.batch import split_decoded
from services.common.codec import Codec
from services.common.contracts import CapturedCall
from services.common.streams import plumbing

ROOT = Path(__file__).resolve().parents[2]
CHANGEABLE = {"input", "output_raw", "output", "parse_ok", "redacted"}  # what admission may rewrite
PINNED = Path(__file__).parent / "data" / "processors_pinned.json"
Record = namedtuple("Record", "topic partition offset key value timestamp headers")
CARD, IBAN, MAIL, PHONE = "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "jane.doe@example.com", "+44 20 7946 0958"


def pinned_calls() -> list[CapturedCall]:
    """About 600 captured calls; the same every time."""
    rng = random.Random(1616)
    with open(ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)][::67][:150]
    start = datetime(2026, 11, 20, tzinfo=timezone.utc)
    pii = [f"my card {CARD} never came", f"send it to {IBAN} please", f"mail me at {MAIL}", f"call {PHONE} now",
           "top up on 2026-12-05 of 25 pounds", "order 123456789012 is late", f"{MAIL} and {CARD}"]
    calls = []
    for i in range(600):
        kind = rng.random()
        task, text, label = "banking77-intent", *rows[rng.randrange(len(rows))]
        output_raw, output, parse_ok, call_id = label, label, True, f"pin{i:04d}"
        if kind < 0.10:
            text = text.upper() if i % 2 else "  " + text.replace(" ", "   ") + " "
        elif kind < 0.18:
            text = rng.choice(pii)
        elif kind < 0.21:
            text = (text + " ") * 12  # over 256 characters
        elif kind < 0.26:
            output_raw, output = "not sure", "not sure"  # says it parsed; it does not
        elif kind < 0.29:
            output_raw, output, parse_ok = "hmm", None, False
        elif kind < 0.32:
            output_raw = output = label.upper()
        elif kind < 0.35:
            output_raw = output = f"{label} ({MAIL})"
        elif kind < 0.39:
            task = "restaurant8k-booking"
            output_raw = output = rng.choice(['{"people": "2", "time": "7pm"}', '{"time":"7pm","people":"2"}',
                                              '{"card": "x"}', 'not json', '{"first_name": "Ann", "date": null}'])
        elif kind < 0.41:
            task, output_raw, output = "draft-reply", "Dear customer, ...", "Dear customer, ..."
        elif kind < 0.42:
            task = "no-such-task"
        elif kind < 0.43:
            call_id = rng.choice(["", "a b", "x" * 129])
        elif kind < 0.44:
            text = "   "
        elif kind < 0.47:
            output_raw = output = rows[(i * 7) % len(rows)][1]  # the frontier answers this input otherwise
        calls.append(CapturedCall(
            call_id=call_id, task=task, ts=start + timedelta(minutes=37 * i), input=text, output_raw=output_raw,
            output=output, parse_ok=parse_ok, latency_ms=round(rng.lognormvariate(6.4, 0.3), 3),
            prompt_tokens=400 + i % 50, completion_tokens=6, cost_usd=0.00111, model="frontier-sim",
            source=rng.choice(["frontier", "fallback", "sampled"]), redacted=i % 5 == 0,
            trace={"router": "r1"} if i % 3 else {"caller": "svc-a"}))
    return calls


def short(text: str | None) -> str | None:
    """A text as pinned: itself, or a digest and its length when long (keeps the file small)."""
    if text is None or len(text) <= 80:
        return text
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:24]}:{len(text)}"


def batches(codec: Codec, calls: list[CapturedCall], size: int = 200) -> list[list[Record]]:
    topic = "pin." + catalog.CALLS_CAPTURED.name
    records = [Record(topic, 0, n, c.call_id.encode(), codec.encode(c), 1_700_000_000_000 + n, ())
               for n, c in enumerate(calls)]
    return [records[i:i + size] for i in range(0, len(records), size)]


def curate_batch(tallies: dict, items: list) -> list:
    """The curator worker's per-record path (services/curator/app.py `curate`: admit and curate
    (`Admission.curate`, which remembers per input and answer), tally;
    a refusal is a dead letter), composed here from the same functions, so the pin holds whatever
    else the worker's step does with the admitted calls."""
    from services.common.streams import refusal
    from services.curator import app as curator
    from services.curator.admission import Refused
    from services.curator.logic import tally_calls

    admitted, letters = [], []
    for item in items:
        try:
            admitted.append(curator.admission.curate(item.value, curator.curator.holdout_fraction))
        except Refused as exc:
            letters.append(refusal(curator.app, item, exc))
    tally_calls(tallies, admitted)
    return letters


def curator_results() -> dict:
    """Per record: what admission and curation made of it (or the refusal); then the partition's
    tallies after every batch went through the worker's per-record path, and its dead letters."""
    from services.curator import app as curator
    from services.curator.admission import Refused
    from services.curator.logic import Tally, curate_call, tallies_json

    codec = plumbing(curator.app).codec
    per_record, tallies, letters = [], {}, []
    for batch in batches(codec, pinned_calls()):
        items, failures = split_decoded(codec, CapturedCall, batch)
        assert not failures
        for item in items:
            try:
                admitted = curator.admission.admit(item.value)
            except Refused as exc:
                per_record.append({"refused": exc.code})
                continue
            curated = curate_call(admitted, curator.curator.holdout_fraction)
            assert curator.admission.curate(item.value, curator.curator.holdout_fraction) == curated
            assert {k: v for k, v in admitted.model_dump().items() if k not in CHANGEABLE} == \
                {k: v for k, v in item.value.model_dump().items() if k not in CHANGEABLE}
            per_record.append([short(admitted.input), short(admitted.output_raw), short(admitted.output),
                               admitted.parse_ok, admitted.redacted, curated.normalised_hash[:16], curated.split,
                               short(curated.label), curated.ts_ms])
        for emit in curate_batch(tallies, items):
            assert emit.spec is catalog.DEADLETTER
            assert codec.decode(emit.value.payload, CapturedCall) == items[emit.value.offset - items[0].meta.offset].value
            letters.append([emit.key.decode(), emit.value.reason, emit.value.offset])
    # the same calls over three partitions, merged as /curator/stats/ does, with small input samples
    # (cap 16: they shrink, and merge at different shares)
    parts: list[dict] = [{t: Tally(inputs_cap=16) for t in ("banking77-intent", "restaurant8k-booking")}
                         for _ in range(3)]
    for batch in batches(codec, pinned_calls(), size=50):
        items, _ = split_decoded(codec, CapturedCall, batch)
        for p, part in enumerate(parts):
            curate_batch(part, [i for i in items if zlib.crc32(i.meta.key) % len(parts) == p])
    return {"records": per_record, "tallies": tallies_json(tallies), "stats": curator.tally_stats([tallies]),
            "dead_letters": letters, "stats_of_partitions": curator.tally_stats(parts),
            "tallies_of_partitions": [tallies_json(p) for p in parts]}


def profiler_results() -> dict:
    from services.profiler import app as profiler

    codec = plumbing(profiler.app).codec
    profiles, letters = {}, []
    for batch in batches(codec, pinned_calls()):
        items, failures = split_decoded(codec, CapturedCall, batch)
        assert not failures
        letters += [e.value.reason for e in profiler.profile_calls(profiles, items)]
    return {"profiles": profiler.profiles_json(profiles), "dead_letters": letters}


def results() -> dict:
    return json.loads(json.dumps({"curator": curator_results(), "profiler": profiler_results()}))


def test_the_curator_admits_counts_and_refuses_as_pinned():
    got, want = results()["curator"], json.loads(PINNED.read_text())["curator"]
    assert len(got["records"]) == len(want["records"]) == 600
    for n, (g, w) in enumerate(zip(got["records"], want["records"])):
        assert g == w, f"record {n}"
    assert got["dead_letters"] == want["dead_letters"]
    assert got["tallies"] == want["tallies"]
    assert got["stats"] == want["stats"]
    assert got["tallies_of_partitions"] == want["tallies_of_partitions"]
    assert got["stats_of_partitions"] == want["stats_of_partitions"]


def test_the_profiler_profiles_as_pinned():
    got, want = results()["profiler"], json.loads(PINNED.read_text())["profiler"]
    assert got == want


def test_the_pinned_batch_covers_what_it_should():
    want = json.loads(PINNED.read_text())["curator"]
    refused = {r["refused"] for r in want["records"] if "refused" in r}
    assert refused >= {"call_id", "unknown_task", "empty_input"}, refused
    admitted = [r for r in want["records"] if isinstance(r, list)]
    assert any(redacted and "<CARD>" in text for text, _, _, _, redacted, *_ in admitted)
    assert any(label is None for *_, label, _ in admitted)
    assert any(text.startswith("sha256:") and int(text.rsplit(":", 1)[1]) > 256 for text, *_ in admitted)
    stats = want["stats"]["banking77-intent"]
    assert stats["duplicate_calls"] > 100 and stats["conflicting_inputs"] > 5 and stats["parse_failures"] > 20


if __name__ == "__main__":
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    PINNED.write_text(json.dumps(results(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
