"""Registry mode without a registry: the client's requests, auth and errors, the codec's framing,
subjects per topic, and the consumer guide's topic table against the catalog."""
from __future__ import annotations

import json
import re
import struct

import httpx
import pytest

from services.common import contracts as c
from services.common.catalog import CATALOG, ROUTING_DECISIONS
from services.common.codec import CONFLUENT_MAGIC, Codec, CodecError
from services.common.registry import (RegistryClient, RegistryConfig, RegistryError, SchemaRefused, subjects_for,
                                      value_subject)
from services.common.settings import REPO_ROOT
from services.common.tail import find_topic
from tests.unit.test_contracts import EXAMPLES


class Recorder:
    """An in-process Confluent-API responder for pure client logic: ids by schema text."""

    def __init__(self, refuse: str | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.ids: dict[str, int] = {}
        self.refuse = refuse

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path.endswith("/versions"):
            text = json.loads(request.content)["schema"]
            if self.refuse and self.refuse in path:
                return httpx.Response(409, json={"error_code": 409, "message": "Schema being registered is incompatible"})
            return httpx.Response(200, json={"id": self.ids.setdefault(text, len(self.ids) + 1)})
        if request.method == "PUT" and path.startswith("/config/"):
            return httpx.Response(200, json=json.loads(request.content))
        if request.method == "GET" and path.startswith("/schemas/ids/"):
            wanted = int(path.rsplit("/", 1)[1])
            for text, i in self.ids.items():
                if i == wanted:
                    return httpx.Response(200, json={"schema": text})
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
        return httpx.Response(404, json={"error_code": 404, "message": f"no route {path}"})


def test_basic_auth_from_url_userinfo_is_moved_to_a_header():
    args = RegistryConfig("https://ana:s3cret@registry.example:8081/apis/ccompat/v7/").client_args()
    assert args["base_url"] == "https://registry.example:8081/apis/ccompat/v7"
    request = httpx.Request("GET", "https://registry.example:8081/subjects")
    auth_header = next(args["auth"].auth_flow(request)).headers["Authorization"]
    assert auth_header == httpx.BasicAuth("ana", "s3cret")._auth_header


def test_bearer_token_and_explicit_credentials():
    args = RegistryConfig("http://r:8081", bearer_token="tok").client_args()
    assert args["headers"]["Authorization"] == "Bearer tok" and args["auth"] is None
    args = RegistryConfig("http://r:8081", username="u", password="p").client_args()
    assert isinstance(args["auth"], httpx.BasicAuth)
    assert "hunter2" not in repr(RegistryConfig("http://r:8081", username="u", password="hunter2"))


def test_subjects_follow_the_topic_name_strategy_with_the_namespace():
    assert value_subject(ROUTING_DECISIONS, "t1.") == "t1.graduate.routing.decisions-value"
    assert subjects_for("graduate.v1.RoutingDecision", "t1.") == [
        "t1.graduate.routing.decisions-value", "t1.graduate.routing.history-value"]
    assert subjects_for("graduate.v1.Nothing") == []


async def test_client_registers_full_text_once_and_sends_auth():
    recorder = Recorder()
    config = RegistryConfig("http://u:p@registry:8081")
    async with RegistryClient(config, transport=httpx.MockTransport(recorder)) as client:
        first = await client.register("x-value", '{"type":"string"}')
        again = await client.register("x-value", '{"type":"string"}')
        await client.set_compatibility("x-value", "BACKWARD_TRANSITIVE")
        with pytest.raises(ValueError, match="not one of"):
            await client.set_compatibility("x-value", "SIDEWAYS")
    assert first == again == 1
    assert [r.method for r in recorder.requests] == ["POST", "PUT"]  # the second register came from the cache
    assert all(r.headers["Authorization"].startswith("Basic ") for r in recorder.requests)
    assert recorder.requests[0].headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
    assert json.loads(recorder.requests[1].content) == {"compatibility": "BACKWARD_TRANSITIVE"}


async def test_a_refused_schema_raises_schema_refused_with_the_registry_message():
    recorder = Recorder(refuse="graduate.disagreements-value")
    codec = Codec(registry=RegistryConfig("http://registry:8081"))
    async with RegistryClient(codec.registry, transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(SchemaRefused, match="incompatible"):
            await codec.register_schemas(client)


async def test_unreachable_registry_is_a_registry_error():
    def down(request):
        raise httpx.ConnectError("connection refused", request=request)

    async with RegistryClient(RegistryConfig("http://registry:8081"), transport=httpx.MockTransport(down)) as client:
        with pytest.raises(RegistryError, match="unreachable"):
            await client.subjects()


async def test_codec_registers_every_topic_and_frames_with_the_schema_id():
    recorder = Recorder()
    codec = Codec(registry=RegistryConfig("http://registry:8081"), namespace="t9.")
    async with RegistryClient(codec.registry, transport=httpx.MockTransport(recorder)) as client:
        ids = await codec.register_schemas(client)
    assert set(ids) == {f"t9.{s.name}-value" for s in CATALOG}
    assert ids["t9.graduate.routing.decisions-value"] == ids["t9.graduate.routing.history-value"]
    registered = {json.loads(t)["name"]: json.loads(t) for t in recorder.ids}
    ts = next(f for f in registered["Disagreement"]["fields"] if f["name"] == "ts")
    assert ts["type"]["logicalType"] == "timestamp-millis"  # the full text, not the canonical form
    assert any(f.get("default") == [] for f in registered["Disagreement"]["fields"])
    for example in EXAMPLES:
        data = codec.encode(example)
        assert data[:1] == CONFLUENT_MAGIC
        assert struct.unpack(">I", data[1:5])[0] == codec._ids[example.avro_name]
        assert codec.decode(data, type(example)) == example
    from services.common.contracts import DatasetRecord
    from services.curator.dataset import to_entry

    record = next(e for e in EXAMPLES if isinstance(e, DatasetRecord))  # the curator's bound encoder frames alike
    assert codec.fields_encoder(DatasetRecord)(to_entry(record)) == codec.encode(record)


def test_confluent_framing_without_a_registry_is_refused_clearly():
    data = b"\x00\x00\x00\x00\x07" + b"body"
    with pytest.raises(CodecError, match="not Avro single-object encoding"):
        Codec().decode(data, c.Disagreement)


def test_tail_finds_topics_by_short_name_and_contract():
    assert find_topic("disagreements").value is c.Disagreement
    assert find_topic("t1.graduate.models", "t1.").value is c.ModelRegistered
    assert find_topic("CapturedCall").name == "graduate.calls.captured"
    with pytest.raises(KeyError, match="not a catalog topic"):
        find_topic("graduate.nope")


def test_consumer_guide_topic_table_matches_the_catalog():
    text = (REPO_ROOT / "docs" / "CONSUMERS.md").read_text()
    rows = {m[0]: m[1:] for m in re.findall(
        r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \| (\d+) \| (\w+) \| ([^|]+) \|", text, re.M)}
    assert set(rows) == {s.name for s in CATALOG}
    for s in CATALOG:
        key, value, partitions, policy, retention = (v.strip() for v in rows[s.name])
        want_retention = ("forever" if s.config().get("retention.ms") == "-1"
                          else "-" if s.retention_ms is None else f"{s.retention_ms // 86_400_000} days")
        assert (key, value, int(partitions), policy, retention) == (
            s.key, s.value.avro_name, s.partitions, s.cleanup_policy, want_retention), s.name


async def test_credentials_in_the_url_stay_out_of_errors_and_reprs():
    def down(request):
        raise httpx.ConnectError("connection refused", request=request)

    config = RegistryConfig("http://ana:hunter2@registry:8081")
    assert "hunter2" not in repr(config) and config.safe_url == "http://registry:8081"
    async with RegistryClient(config, transport=httpx.MockTransport(down)) as client:
        with pytest.raises(RegistryError) as info:
            await client.subjects()
    assert "hunter2" not in str(info.value)
