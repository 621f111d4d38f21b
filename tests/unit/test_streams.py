"""The faust plumbing without a broker: app settings, credentials, decoding and dead-letter decisions."""
from __future__ import annotations

import faust
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from services.common import catalog
from services.common.codec import Codec, CodecError
from services.common.contracts import CapturedCall, ReviewedLabel, ShadowResult
from services.common.settings import KafkaSettings
from services.common.streams import (Emit, Item, Meta, WorkerSettings, app_id, broker_credentials,
                                     broker_url, call_handler, decode, make_app, plumbing, process_batch,
                                     process_one, source_topic, internal_topic)
from services.workers import SERVICES, apply_overrides

META = Meta("t.graduate.calls.captured", 3, 42, b"c1")


def call(call_id: str = "c1", **kw) -> CapturedCall:
    base = dict(call_id=call_id, task="banking77-intent", input="where is my card?", output_raw="card_arrival",
                output="card_arrival", latency_ms=500.0)
    return CapturedCall(**(base | kw))


def test_app_is_configured_the_way_faust_is_safe(tmp_path):
    s = WorkerSettings(topic_namespace="tabc.", worker_web_port=17001, var_dir=tmp_path)
    app = make_app("curator", s)
    assert app.conf.id == "tabc.graduate-curator" == app_id("curator", "tabc.")
    assert app.conf.consumer_auto_offset_reset == "earliest"
    assert app.conf.broker_max_poll_records == 500
    assert app.conf.topic_partitions == catalog.CALLS_CAPTURED.partitions
    assert app.conf.web_port == 17001
    assert str(app.conf.datadir).startswith(str(tmp_path))
    assert app.conf.consumer_group_instance_id.startswith("tabc.graduate-curator-")
    assert app.conf.consumer_group_instance_id.endswith("-17001")
    assert app.conf.store.scheme == "memory"
    assert app.conf.broker_session_timeout == 30.0
    assert app.conf.stream_wait_empty is False  # with it, SIGTERM waits for a held event that never gets acked
    assert plumbing(app).processor == "curator"


def test_source_topic_is_raw_bytes_from_the_catalog(tmp_path):
    app = make_app("profiler", WorkerSettings(topic_namespace="tq.", var_dir=tmp_path))
    topic = source_topic(app, catalog.CALLS_CAPTURED, "tq.")
    assert topic.get_topic_name() == "tq.graduate.calls.captured"
    assert topic.partitions == 12
    assert "tq.graduate.calls.captured" in plumbing(app).sources
    with pytest.raises(ValueError):
        source_topic(app, catalog.CALLS_CAPTURED, "other.")


def test_internal_topic_keeps_its_partitions_and_config(tmp_path):
    app = make_app("judge", WorkerSettings(topic_namespace="ti.", var_dir=tmp_path))
    state = internal_topic(app, "state", partitions=4, config={"cleanup.policy": "compact"})
    by_task = internal_topic(app, "by-task")
    assert state.get_topic_name() == "ti.graduate-judge-state" and state.partitions == 4
    assert by_task.get_topic_name() == "ti.graduate-judge-by-task"
    assert plumbing(app).internal == {"ti.graduate-judge-state": (4, {"cleanup.policy": "compact"}),
                                      "ti.graduate-judge-by-task": (catalog.CALLS_CAPTURED.partitions, {})}
    assert internal_topic(app, "state", partitions=4, config={"cleanup.policy": "compact"}) is state


def test_broker_url_and_credentials():
    assert broker_url(KafkaSettings(bootstrap="a:1, b:2")) == "kafka://a:1;b:2"
    assert broker_credentials(KafkaSettings()) is None
    sasl = broker_credentials(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                                            sasl_username="u", sasl_password="p"))
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.value) == ("u", "p", "SCRAM-SHA-512")
    with pytest.raises(ValueError):
        broker_credentials(KafkaSettings(security_protocol="SASL_PLAINTEXT"))
    assert isinstance(broker_credentials(KafkaSettings(security_protocol="SSL")), faust.SSLCredentials)


async def test_call_handler_accepts_sync_async_single_and_none():
    e = Emit(catalog.SHADOW_RESULTS, "c1", call())
    assert await call_handler(lambda v, m: None, 1, META) == []
    assert await call_handler(lambda v, m: e, 1, META) == [e]

    async def many(v, m):
        return (e, e)

    assert await call_handler(many, 1, META) == [e, e]
    with pytest.raises(TypeError):
        await call_handler(lambda v, m: ["not an emit"], 1, META)


async def test_process_one_decodes_handles_and_catches(codec: Codec):
    raw = codec.encode(call())
    seen = []
    out = await process_one(codec, CapturedCall, lambda v, m: seen.append((v.call_id, m.offset)), META, raw)
    assert out.error is None and out.emits == [] and seen == [("c1", 42)]

    def boom(v, m):
        raise RuntimeError("model exploded")

    out = await process_one(codec, CapturedCall, boom, META, raw)
    assert isinstance(out.error, RuntimeError) and "exploded" in str(out.error)
    out = await process_one(codec, ShadowResult, lambda v, m: None, META, raw)  # wrong record type
    assert isinstance(out.error, CodecError)


@hsettings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
async def test_process_one_never_raises_on_poison(raw):
    codec = Codec()
    out = await process_one(codec, CapturedCall, lambda v, m: None, META, raw)
    assert out.error is not None or out.emits == []


async def test_unknown_fingerprint_is_a_codec_error(codec: Codec):
    raw = b"\xc3\x01" + b"\x00" * 8 + codec.encode(call())[10:]
    out = await process_one(codec, CapturedCall, lambda v, m: None, META, raw)
    assert isinstance(out.error, CodecError) and "unknown schema fingerprint" in str(out.error)


async def test_process_batch_dead_letters_poison_alone_and_all_on_handler_error(codec: Codec):
    good = [(Meta("t", 0, i), codec.encode(call(f"c{i}"))) for i in range(3)]
    batch = good[:1] + [(Meta("t", 0, 9), b"junk")] + good[1:]
    emits, failures = await process_batch(codec, CapturedCall, lambda items: [
        Emit(catalog.SHADOW_RESULTS, i.value.call_id, i.value) for i in items], batch)
    assert [e.key for e in emits] == ["c0", "c1", "c2"]
    assert [(m.offset, type(exc).__name__) for m, _, exc in failures] == [(9, "CodecError")]

    def boom(items):
        raise TimeoutError("triton down")

    emits, failures = await process_batch(codec, CapturedCall, boom, batch)
    assert emits == [] and sorted(m.offset for m, _, _ in failures) == [0, 1, 2, 9]


async def test_a_tuple_of_contracts_decodes_into_the_one_written(codec: Codec):
    label = ReviewedLabel(call_id="c1", task="banking77-intent", label="card_arrival", reviewer="r")
    both = (ShadowResult, ReviewedLabel)
    assert decode(codec, both, codec.encode(label)) == label
    with pytest.raises(CodecError, match="expected one of graduate.v1.ShadowResult, graduate.v1.ReviewedLabel"):
        decode(codec, both, codec.encode(call()))
    out = await process_one(codec, both, lambda v, m: None, META, b"junk")
    assert isinstance(out.error, CodecError)


def test_emit_key_bytes():
    assert Emit(catalog.SHADOW_RESULTS, "k", call()).key_bytes() == b"k"
    assert Emit(catalog.SHADOW_RESULTS, b"k", call()).key_bytes() == b"k"
    assert Emit(catalog.SHADOW_RESULTS, None, call()).key_bytes() is None


def test_worker_overrides_become_settings(tmp_path):
    env: dict = {}
    apply_overrides(7777, tmp_path, "inst-1", None, environ=env)
    assert env == {"GRADUATE_WORKER_WEB_PORT": "7777", "GRADUATE_WORKER_DATADIR": str(tmp_path),
                   "GRADUATE_WORKER_INSTANCE_ID": "inst-1"}
    assert set(SERVICES) == {"profiler", "curator", "shadow", "judge", "controller", "trainer"}


