"""Properties that must hold for every input, not just the examples the unit tests chose.

- The codec: every contract instance the Avro schema allows round-trips exactly, and any corruption
  of a valid message is a `CodecError` (never another exception, never a crash).
- The split: deterministic (also across processes and hash seeds), stable as the data grows, and
  equal normalised inputs never on both sides, also for case and Unicode-form variants.
- The threshold: `choose_threshold` never picks a threshold whose kept holdout accuracy is below the
  target, it is the lowest one that reaches it, and the router's own fallback rule keeps exactly
  the requests calibration counted.
"""
from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from services.common.codec import Codec, CodecError, load_schemas
from services.common.contracts import ALL_CONTRACTS, CapturedCall, Contract
from services.common.normalize import input_hash, normalise_input, split_of
from services.common.settings import REPO_ROOT
from services.common.tasks import TaskSpec
from services.common.triton import SmallAnswer
from services.curator.logic import build_dataset, curate_call
from services.router.logic import small_fallback_reason
from tests.reliability.support import knob
from trainer.calibrate import choose_threshold

pytestmark = pytest.mark.reliability

EXAMPLES = knob("EXAMPLES", 80)
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                 HealthCheck.data_too_large])
CODEC = Codec()
TASK = "banking77-intent"

# -- the codec ---------------------------------------------------------------------------------
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MILLIS = st.integers(0, 4102444800000).map(lambda ms: EPOCH + timedelta(milliseconds=ms))  # 1970 .. 2100
TEXT = st.text(max_size=60)


def for_avro(schema) -> st.SearchStrategy:
    """Values the parsed Avro schema (the contract) allows."""
    if isinstance(schema, list):
        return st.one_of(*[for_avro(s) for s in schema])
    if isinstance(schema, str):
        return {"null": st.none(), "string": TEXT, "boolean": st.booleans(), "bytes": st.binary(max_size=64),
                "int": st.integers(-2**31, 2**31 - 1), "long": st.integers(-2**63, 2**63 - 1),
                "double": st.floats(allow_nan=False), "float": st.floats(allow_nan=False, width=32)}[schema]
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: for_avro(f["type"]) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(for_avro(schema["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(TEXT, for_avro(schema["values"]), max_size=4)
    if kind == "long" and schema.get("logicalType") == "timestamp-millis":
        return MILLIS
    return for_avro(kind)


def contracts(model: type[Contract]) -> st.SearchStrategy:
    current, _ = load_schemas()
    return for_avro(current[model.avro_name].parsed).map(model.model_validate)


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=lambda m: m.__name__)
def test_every_contract_instance_round_trips(model, ledger):
    @PROPERTY
    @given(data=st.data())
    def round_trip(data):
        value = data.draw(contracts(model))
        encoded = CODEC.encode(value)
        assert CODEC.decode(encoded, model) == value
        assert CODEC.encode(CODEC.decode(encoded, model)) == encoded  # byte-stable too

    round_trip()
    ledger("Codec round trip of every contract (hypothesis, values drawn from the Avro schemas)",
           f"{len(ALL_CONTRACTS)} contracts × up to {EXAMPLES} generated instances (any text, int/long bounds, "
           "doubles incl. ±inf, nulls, maps, arrays, bytes, timestamps)", "0 (decoded equal, re-encoded byte-equal)",
           "n/a")


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=lambda m: m.__name__)
def test_a_corrupted_message_is_a_codec_error_or_a_valid_contract(model, ledger):
    @PROPERTY
    @given(data=st.data())
    def corrupt(data):
        encoded = bytearray(CODEC.encode(data.draw(contracts(model))))
        how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip":
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del encoded[data.draw(st.integers(0, len(encoded) - 1)):]
        else:
            encoded += data.draw(st.binary(min_size=1, max_size=16))
        try:
            decoded = CODEC.decode(bytes(encoded), model)
        except CodecError:
            return
        assert isinstance(decoded, model)  # Avro has no checksum: a flipped string byte may still decode

    corrupt()
    ledger("Corrupted messages (a flipped byte, truncated, trailing bytes)",
           f"{len(ALL_CONTRACTS)} contracts × up to {EXAMPLES} corrupted encodings", "n/a",
           "a CodecError with the reason (what a worker dead-letters), never another exception")


# -- the split ---------------------------------------------------------------------------------
WORDS = ["card", "Card", "CARD", "top up", "ﬁle", "fi le", "Groß", "GROSS", "ß\u0301", "Å", "A\u030a", "ｆｕｌｌ",
         "é", "e\u0301", "\u00a0", "\t", "  ", "İ", "ǅ", "Ω", "ω", "№", "½"]
INPUTS = st.lists(st.sampled_from(WORDS) | st.text(max_size=6), min_size=1, max_size=6).map("".join)


def variants(text: str) -> list[str]:
    """What a person would call the same message: other case, other Unicode form, other spacing."""
    return [text.upper(), text.lower(), text.casefold(), f"  {text}\t", unicodedata.normalize("NFD", text),
            unicodedata.normalize("NFKD", text), unicodedata.normalize("NFC", text.upper())]


@PROPERTY
@given(INPUTS, st.floats(0.0, 0.99))
@example("ß\u0301 3", 0.15)  # found by this property: see test_normalising_is_idempotent
def test_case_and_unicode_variants_of_an_input_sit_on_one_side(text, fraction):
    sides = {split_of(TASK, v, fraction) for v in [text, *variants(text)]}
    assert len(sides) == 1, {ascii(v): (ascii(normalise_input(v)), split_of(TASK, v, fraction)) for v in [text, *variants(text)]}


@PROPERTY
@given(INPUTS)
@example("ß\u0301")  # normalise: 'ss\u0301'; normalise again: 'sś' (casefold after NFKC leaves it decomposed)
def test_normalising_is_idempotent(text):
    once = normalise_input(text)
    assert normalise_input(once) == once


def calls_of(texts: list[str], prefix: str) -> list[CapturedCall]:
    return [CapturedCall(call_id=f"{prefix}{i}", task=TASK, input=t, output_raw="card_arrival", output="card_arrival",
                         latency_ms=1.0) for i, t in enumerate(texts)]


def test_the_split_is_stable_as_data_grows_and_never_straddles(ledger):
    @PROPERTY
    @given(st.lists(INPUTS, min_size=1, max_size=40), st.lists(INPUTS, max_size=40), st.floats(0.05, 0.9))
    def grow(first, later, fraction):
        early = build_dataset(TASK, [curate_call(c, fraction) for c in calls_of(first, "a")], {})
        # the same texts again (as case/space variants), and new ones: the dataset grows
        grown_calls = calls_of(first, "a") + calls_of([v for t in first for v in variants(t)[:2]] + later, "b")
        grown = build_dataset(TASK, [curate_call(c, fraction) for c in grown_calls], {})
        before = {e.normalised_hash: e.split for e in early.examples}
        after = {e.normalised_hash: e.split for e in grown.examples}
        assert all(after[h] == side for h, side in before.items())  # no example moved
        train = {e.normalised_hash for e in grown.split("train")}
        holdout = {e.normalised_hash for e in grown.split("holdout")}
        assert not train & holdout
        by_text = {normalise_input(c.input): split_of(TASK, c.input, fraction) for c in grown_calls}
        for c in grown_calls:  # equal normalised inputs: one side
            assert split_of(TASK, c.input, fraction) == by_text[normalise_input(c.input)]

    grow()
    ledger("The train/holdout split as data grows",
           f"up to {EXAMPLES} generated datasets of ≤ 40 inputs, grown by their case/space variants and new inputs",
           "0 examples changed side; no normalised input on both sides of a dataset", "n/a")


def test_the_split_is_the_same_in_another_process_with_another_hash_seed(ledger):
    texts = [f"my card {i} did not arrive" for i in range(300)] + WORDS
    here = [split_of(TASK, t, 0.15) for t in texts] + [input_hash(TASK, normalise_input(t)).hex() for t in texts]
    code = ("import json,sys; from services.common.normalize import split_of, input_hash, normalise_input as n; "
            "t=json.load(sys.stdin); print(json.dumps([split_of(%r, x, 0.15) for x in t] + "
            "[input_hash(%r, n(x)).hex() for x in t]))") % (TASK, TASK)
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                             cwd=REPO_ROOT, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == here
    holdout = here[:len(texts)].count("holdout") / len(texts)
    assert 0.05 < holdout < 0.3  # and it is a ~15 % share, not everything on one side
    ledger("The split in another process", f"{len(texts)} inputs, 2 processes with other PYTHONHASHSEEDs",
           "n/a", "the same side and hash for every input")


# -- the threshold -----------------------------------------------------------------------------
CONFIDENCE = st.floats(0.0, 1.0, width=32)  # what Triton returns (FP32)


@st.composite
def holdouts(draw):
    n = draw(st.integers(1, 200))
    levels = draw(st.lists(CONFIDENCE, min_size=1, max_size=12))  # few levels: many ties, as real models give
    conf = np.array([draw(st.sampled_from(levels)) for _ in range(n)], dtype=np.float32)
    correct = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return conf, correct


def kept_accuracy(conf: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[int, float]:
    kept = [bool(c) for x, c in zip(conf.tolist(), correct.tolist()) if x >= threshold]
    return len(kept), (sum(kept) / len(kept) if kept else 0.0)


def test_the_threshold_never_keeps_requests_below_the_target(ledger):
    @PROPERTY
    @given(holdouts(), st.floats(0.0, 1.0), st.integers(1, 20))
    def choose(holdout, target, min_kept):
        conf, correct = holdout
        choice = choose_threshold(conf, correct, target, min_kept=min_kept)
        candidates = sorted({float(c) for c in conf.tolist()})
        reaching = [t for t in candidates if kept_accuracy(conf, correct, t)[0] >= min_kept
                    and kept_accuracy(conf, correct, t)[1] >= target - 1e-12]
        if choice.threshold is None:
            assert not reaching
            return
        kept, accuracy = kept_accuracy(conf, correct, choice.threshold)
        assert accuracy >= target - 1e-12 and kept >= min_kept
        assert (kept, choice.coverage) == (choice.kept, pytest.approx(kept / len(conf)))
        assert choice.threshold == min(reaching)  # the lowest that reaches it: as much coverage as allowed

    choose()
    ledger("Threshold selection (trainer/calibrate.py)", f"up to {EXAMPLES} generated holdouts (1–200 FP32 "
           "confidences with many ties, any target, min_kept 1–20)",
           "n/a", "never a threshold whose kept holdout accuracy is below the target; always the lowest that reaches it")


def test_the_router_keeps_exactly_what_calibration_counted(ledger):
    """The threshold travels as a float64 in the RoutingDecision; the router compares Triton's FP32
    confidence with it. The requests the router serves small must be the ones calibration kept."""
    @PROPERTY
    @given(holdouts(), st.floats(0.0, 1.0))
    def serve(holdout, target):
        conf, correct = holdout
        choice = choose_threshold(conf, correct, target)
        if choice.threshold is None:
            return
        spec = TaskSpec(name=TASK, kind="classification", labels=("a", "b"))
        served_small = [small_fallback_reason(spec, SmallAnswer("a", float(c)), choice.threshold) is None
                        for c in conf]
        assert sum(served_small) == choice.kept
        assert sum(bool(k) and bool(c) for k, c in zip(served_small, correct)) / choice.kept >= target - 1e-12

    serve()
    ledger("Threshold at serving time (router fallback rule vs calibration)", f"up to {EXAMPLES} generated holdouts",
           "n/a", "the router keeps exactly the requests calibration counted (ties at the threshold kept)")
