"""The Avro contracts: models mirror the schema files, the codec round-trips and refuses bad bytes."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastavro.schema import parse_schema

from services.common import contracts as c
from services.common.codec import SINGLE_OBJECT_MARKER, Codec, CodecError, schemas_dir

TS = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)

EXAMPLES: list[c.Contract] = [
    c.CapturedCall(call_id="c1", task="banking77-intent", ts=TS, input="where is my card?", output_raw="card_arrival",
                   output="card_arrival", latency_ms=512.5, prompt_tokens=120, completion_tokens=3, cost_usd=0.0003,
                   source="fallback", trace={"tenant_request": "r1"}),
    c.ReviewedLabel(call_id="c1", task="banking77-intent", label="card_arrival", reviewer="ana", ts=TS, note="clear"),
    c.ReviewedLabel(call_id="c2", task="t", verdict="not_in_label_set", reviewer="bo", ts=TS),
    c.ShadowResult(call_id="c1", task="t", model_version="3", output="card_arrival", confidence=0.93, latency_ms=6.1,
                   ts=TS, input="x", frontier_output=None),
    c.Disagreement(call_id="c1", task="t", model_version="3", input="x", frontier_output="a", small_output="b",
                   confidence=0.4, ts=TS),
    c.ShadowResult(call_id="c2", task="restaurant8k-booking", model_version="1", output='{"people": "2"}',
                   confidence=0.61, latency_ms=4.0, ts=TS, input="table for 2", frontier_output='{"people": "3"}',
                   field_confidence={"people": 0.61, "time": 0.99}),
    c.Disagreement(call_id="c2", task="restaurant8k-booking", model_version="1", input="table for 2",
                   frontier_output='{"people": "3"}', small_output='{"people": "2"}', confidence=0.61, ts=TS,
                   differing_fields=["people"]),
    c.ModelRegistered(task="t", version="2", base_model="all-MiniLM-L6-v2", snapshot_id="s1", ts=TS, holdout_size=100,
                      gold_reviewed=30, gold_frontier=70, small_accuracy=0.9, frontier_accuracy=0.91, agreement=0.88,
                      paired=c.PairedCounts(both_correct=85, small_only=5, frontier_only=6, neither=4), threshold=None,
                      labels=["a", "b"], artifact_uri="file:///m", triton_model="t"),
    c.RoutingDecision(task="t", mode="small", model_version="2", threshold=0.71, reason="gate passed",
                      evidence=json.dumps({"n": 500}), decided_by="controller", ts=TS),
    c.RouterOutcome(call_id="c1", task="t", mode="small", served_by="fallback", ts=TS, confidence=0.2,
                    fallback_reason="low_confidence", latency_ms=640.0, small_latency_ms=5.0, frontier_latency_ms=630.0),
    c.DeadLetter(source_topic="graduate.calls.captured", partition=3, offset=42, processor="curator",
                 reason="unknown schema fingerprint", error_type="CodecError", ts=TS, key=b"k", payload=b"\x00\xff"),
    c.RetrainRequest(task="t", reason="fallback rate 0.4 > predicted 0.1", requested_by="controller", ts=TS),
    c.ShadowStats(task="t", model_version="2", ts=TS, compared=10, agreed=9,
                  paired=c.PairedCounts(both_correct=3, small_only=1)),
    c.DatasetRecord(task="t", normalised_hash="ab" * 32, shard=3, split="holdout", call_id="c1", input="x",
                    label="a", kept_ts=TS, first_seen=TS, last_seen=TS, calls=3, usable=2, answers=["a", "b"],
                    recent_call_ids=["c0", "c1"], last_offset=41),
    c.DatasetForgotten(task="t", normalised_hash="ab" * 32, requested_by="ana", ts=TS, reason="user request"),
]


def test_every_contract_has_an_example():
    assert {type(e) for e in EXAMPLES} == set(c.ALL_CONTRACTS)


@pytest.mark.parametrize("model", c.ALL_CONTRACTS, ids=lambda m: m.__name__)
def test_model_fields_match_schema_file(model):
    schema = json.loads((schemas_dir() / f"{model.__name__}.avsc").read_text())
    assert f"{schema['namespace']}.{schema['name']}" == model.avro_name
    assert [f["name"] for f in schema["fields"]] == list(model.model_fields)


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(codec, record):
    data = codec.encode(record)
    assert data[:2] == SINGLE_OBJECT_MARKER
    assert codec.decode(data, type(record)) == record


def test_corrupted_fingerprint_is_a_clear_error(codec):
    data = bytearray(codec.encode(EXAMPLES[0]))
    data[5] ^= 0xFF
    with pytest.raises(CodecError, match="unknown schema fingerprint"):
        codec.decode(bytes(data), c.CapturedCall)


def test_truncated_body_is_a_clear_error(codec):
    data = codec.encode(EXAMPLES[0])
    with pytest.raises(CodecError, match="truncated|corrupt"):
        codec.decode(data[:-20], c.CapturedCall)


def test_not_avro_at_all(codec):
    with pytest.raises(CodecError, match="not Avro single-object encoding"):
        codec.decode(b'{"call_id": "x"}', c.CapturedCall)


def test_wrong_record_type(codec):
    with pytest.raises(CodecError, match="expected graduate.v1.CapturedCall"):
        codec.decode(codec.encode(EXAMPLES[1]), c.CapturedCall)


def _released_versions() -> list[Path]:
    return sorted(p for p in (schemas_dir() / "released").iterdir() if p.is_dir())


@pytest.mark.parametrize("model", c.ALL_CONTRACTS, ids=lambda m: m.__name__)
def test_current_schema_reads_every_released_version(model):
    """Evolution rule: a new schema version must read data written with every released one."""
    from fastavro import schemaless_reader, schemaless_writer
    import io

    from tests.unit.avro_samples import sample_for

    current = parse_schema(json.loads((schemas_dir() / f"{model.__name__}.avsc").read_text()), named_schemas={})
    for version in _released_versions():
        path = version / f"{model.__name__}.avsc"
        if not path.exists():
            continue  # the record did not exist in that release
        old = parse_schema(json.loads(path.read_text()), named_schemas={})
        buf = io.BytesIO()
        schemaless_writer(buf, old, sample_for(old))
        buf.seek(0)
        record = schemaless_reader(buf, old, current)
        model.model_validate(record)


def test_codec_decodes_old_writer_schema(tmp_path, codec):
    """A message written with a released schema whose field was later added decodes with the default."""
    import shutil

    root = tmp_path / "schemas"
    shutil.copytree(schemas_dir(), root)
    old = json.loads((root / "ReviewedLabel.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "note"]
    (root / "released" / "v0").mkdir()
    (root / "released" / "v0" / "ReviewedLabel.avsc").write_text(json.dumps(old))
    old_writer = Codec(root=root)
    parsed = parse_schema(old, named_schemas={})
    import io

    from fastavro import schemaless_writer

    from services.common.codec import _fingerprint

    buf = io.BytesIO()
    schemaless_writer(buf, parsed, {"call_id": "c", "task": "t", "verdict": "label", "label": "x", "reviewer": "r", "ts": TS})
    data = SINGLE_OBJECT_MARKER + _fingerprint(parsed) + buf.getvalue()
    assert old_writer.decode(data, c.ReviewedLabel).note is None


@pytest.mark.parametrize("model", c.ALL_CONTRACTS, ids=lambda m: m.__name__)
def test_every_released_schema_reads_data_of_the_current_one(model):
    """The other direction: a reader still on a released schema reads what the current one writes
    (fields added since are skipped), so new fields must never be required of old readers."""
    from fastavro import schemaless_reader, schemaless_writer
    import io

    from tests.unit.avro_samples import sample_for

    current = parse_schema(json.loads((schemas_dir() / f"{model.__name__}.avsc").read_text()), named_schemas={})
    for version in _released_versions():
        path = version / f"{model.__name__}.avsc"
        if not path.exists():
            continue
        old = parse_schema(json.loads(path.read_text()), named_schemas={})
        buf = io.BytesIO()
        schemaless_writer(buf, current, sample_for(current))
        buf.seek(0)
        schemaless_reader(buf, current, old)


def _released_v1_message(name: str, record: dict) -> bytes:
    import io

    from fastavro import schemaless_writer

    from services.common.codec import _fingerprint

    old = parse_schema(json.loads((schemas_dir() / "released" / "v1" / f"{name}.avsc").read_text()), named_schemas={})
    buf = io.BytesIO()
    schemaless_writer(buf, old, record)
    return SINGLE_OBJECT_MARKER + _fingerprint(old) + buf.getvalue()


def test_v1_shadow_results_and_disagreements_decode_with_the_new_fields_empty(codec):
    """Records on the topics from before field-level extraction support read with the defaults."""
    result = codec.decode(_released_v1_message("ShadowResult", {
        "call_id": "c", "task": "t", "model_version": "1", "output": "a", "confidence": 0.5, "latency_ms": 1.0,
        "ts": TS, "input": "x", "frontier_output": "b", "source": "frontier"}), c.ShadowResult)
    assert result.field_confidence is None and result.output == "a"
    d = codec.decode(_released_v1_message("Disagreement", {
        "call_id": "c", "task": "t", "model_version": "1", "input": "x", "frontier_output": "b", "small_output": "a",
        "confidence": 0.5, "ts": TS, "reviewed_label": None}), c.Disagreement)
    assert d.differing_fields == [] and d.small_output == "a"


def test_v1_readers_read_the_new_disagreement_and_shadow_result(codec):
    """A consumer that still reads with the released v1 schemas gets every v1 field of a record
    written now (the field-level additions are skipped)."""
    import io

    from fastavro import schemaless_reader

    for record in (e for e in EXAMPLES if isinstance(e, (c.ShadowResult, c.Disagreement)) and e.call_id == "c2"):
        name = type(record).__name__
        data = codec.encode(record)
        old = parse_schema(json.loads((schemas_dir() / "released" / "v1" / f"{name}.avsc").read_text()),
                           named_schemas={})
        read = schemaless_reader(io.BytesIO(data[10:]), codec.schema_for(record).parsed, old)
        assert set(read) == {f["name"] for f in old["fields"]}
        assert read["small_output" if name == "Disagreement" else "output"] == '{"people": "2"}'


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_decoding_without_revalidation_gives_the_validated_model(codec, record):
    """The batch processors decode with `revalidate=False`: where Avro already checked every field
    (trusted_constructor), the model is built without pydantic's second pass; it must be the same."""
    data = codec.encode(record)
    fast, checked = codec.decode(data, type(record), revalidate=False), codec.decode(data, type(record))
    assert fast == checked == record
    assert fast.model_dump() == checked.model_dump() and list(fast.model_dump()) == list(checked.model_dump())
    assert fast.model_fields_set == checked.model_fields_set
    assert {k: type(v) for k, v in fast.__dict__.items()} == {k: type(v) for k, v in checked.__dict__.items()}
    assert codec.encode(fast) == data
    if fast.model_fields:  # still a frozen pydantic model that copies like one
        name = next(iter(type(record).model_fields))
        with pytest.raises(ValueError):
            setattr(fast, name, getattr(fast, name))
        assert fast.model_copy(update={name: getattr(fast, name)}) == fast
        copied = fast.model_copy(update={name: getattr(fast, name)})
        assert copied.__pydantic_fields_set__ is not fast.__pydantic_fields_set__  # updates touch the copy's own


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_the_bound_trusted_decoder_answers_as_decode_does(codec, record):
    """`Codec.trusted_decoder(model)` (the batch processors' decode) hoists `decode`'s checks; what it
    returns, and what it refuses with which message, must not change."""
    model, data = type(record), codec.encode(record)
    read = codec.trusted_decoder(model)
    assert read(data) == codec.decode(data, model, revalidate=False) == record
    assert read(bytearray(data)) == record and read(memoryview(data)) == record
    bad = [data[:-1], data + b"\x00", data[:9], b"\xc3\x01" + b"\x00" * 8 + data[10:], b"{}", "text",
           data[:10] + b"\xff" * 4]
    for raw in bad:
        with pytest.raises(CodecError) as want:
            codec.decode(raw, model, revalidate=False)
        with pytest.raises(CodecError) as got:
            read(raw)
        assert str(got.value) == str(want.value)


def test_only_what_avro_types_as_pydantic_would_skips_revalidation(codec):
    from typing import Literal, Optional

    from pydantic import field_validator

    from services.common.codec import trusted_constructor

    schema = codec.schema_for(c.CapturedCall)
    assert trusted_constructor(c.CapturedCall, schema) is not None

    class Narrower(c.Contract):  # a Literal the Avro enum is wider than: pydantic would refuse a symbol
        avro_name = c.CapturedCall.avro_name
        call_id: str
        task: str
        tenant: str
        ts: datetime
        input: str
        output_raw: str
        output: Optional[str]
        parse_ok: bool
        provider: str
        model: str
        latency_ms: float
        prompt_tokens: int
        completion_tokens: int
        cost_usd: float
        source: Literal["frontier"]
        redacted: bool
        trace: dict[str, str]

    class Checked(c.CapturedCall):
        @field_validator("input")
        @classmethod
        def _strip(cls, v: str) -> str:
            return v.strip()

    class Coerced(c.CapturedCall):
        prompt_tokens: float  # Avro int, pydantic would make it a float

    for model in (Narrower, Checked, Coerced):
        assert trusted_constructor(model, schema) is None, model.__name__
    assert trusted_constructor(c.ModelRegistered, codec.schema_for(c.ModelRegistered)) is None  # nested records
    data = codec.encode(EXAMPLES[0])
    assert codec.decode(data, Checked, revalidate=False).input == EXAMPLES[0].input.strip()
