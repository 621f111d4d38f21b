"""The topic catalog, the namer, drift detection, settings and task specs."""
from __future__ import annotations

import pytest

from services.common.catalog import CATALOG, CALLS_CAPTURED, MODELS, ROUTING_DECISIONS, spec_for, topic_name
from services.common.kafka import find_drift
from services.common.settings import CommonSettings, KafkaSettings, load_settings
from services.common.tasks import ParseFailure, TaskSpec, load_tasks, parse_fields
from services.common.settings import REPO_ROOT


def test_catalog_matches_design():
    names = {s.name for s in CATALOG}
    assert {"graduate.calls.captured", "graduate.labels.reviewed", "graduate.shadow.results",
            "graduate.disagreements", "graduate.models", "graduate.routing.decisions",
            "graduate.router.outcomes", "graduate.deadletter"} <= names
    assert CALLS_CAPTURED.partitions == 12
    assert ROUTING_DECISIONS.partitions == 1 and ROUTING_DECISIONS.cleanup_policy == "compact"
    assert MODELS.partitions == 1 and MODELS.cleanup_policy == "compact"
    assert len(names) == len(CATALOG)


def test_namer_prefixes_and_resolves_back():
    assert topic_name(CALLS_CAPTURED, "t1.") == "t1.graduate.calls.captured"
    assert spec_for("t1.graduate.calls.captured", "t1.") is CALLS_CAPTURED
    with pytest.raises(KeyError, match="not a topic of the catalog"):
        spec_for("graduate.nope")


def test_drift_names_what_differs():
    cfg = {"cleanup.policy": "delete", "retention.ms": "1000"}
    drift = find_drift(ROUTING_DECISIONS, 3, cfg)
    assert "partitions 3, catalog says 1" in drift
    assert "cleanup.policy=delete, catalog says compact" in drift
    assert find_drift(ROUTING_DECISIONS, 1, {"cleanup.policy": "compact"}) == []


def test_bad_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("GRADUATE_KAFKA_BOOTSTRAP", "no-port-here")
    with pytest.raises(SystemExit, match="GRADUATE_KAFKA_BOOTSTRAP"):
        load_settings(KafkaSettings)
    monkeypatch.setenv("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("GRADUATE_TOPIC_NAMESPACE", "bad/space")
    with pytest.raises(SystemExit, match="GRADUATE_TOPIC_NAMESPACE"):
        load_settings(CommonSettings)


def test_sasl_ssl_client_config():
    s = KafkaSettings(bootstrap="b:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="u", sasl_password="hunter2-secret")
    cfg = s.client_config()
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512" and cfg["sasl_plain_password"] == "hunter2-secret"
    assert "hunter2-secret" not in repr(s)  # the secret is not shown
    with pytest.raises(ValueError, match="SASL"):
        KafkaSettings(security_protocol="SASL_SSL").client_config()


def test_shipped_task_specs():
    tasks = load_tasks(REPO_ROOT / "config" / "tasks.yaml")
    b77 = tasks.get("banking77-intent")
    assert len(b77.labels) == 77 and b77.kind == "classification"
    assert b77.parse_output(' "Card_Arrival". ') == "card_arrival"
    with pytest.raises(ParseFailure):
        b77.parse_output("I think it is about a card")
    assert tasks.get("draft-reply").kind == "freeform"
    with pytest.raises(KeyError, match="unknown task"):
        tasks.get("nope")


def test_input_extraction():
    spec = TaskSpec(name="t", kind="classification", labels=("a", "b"))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "second"}]}]
    assert spec.extract_input(msgs) == "second"
    with pytest.raises(ValueError, match="no message with role 'user'"):
        spec.extract_input([{"role": "system", "content": "s"}])
    with pytest.raises(ValueError, match="empty"):
        spec.extract_input([{"role": "user", "content": "  "}])
    field = TaskSpec(name="t", kind="classification", labels=("a", "b"), input={"from": "field", "field": "ticket"})
    assert field.extract_input([{"role": "user", "content": '{"ticket": "hello"}'}]) == "hello"
    with pytest.raises(ValueError, match="field 'ticket'"):
        field.extract_input([{"role": "user", "content": "plain"}])


def test_extraction_seam():
    fields = TaskSpec(name="x", kind="extraction", fields=[{"name": "people", "required": True}, {"name": "time"}]).fields
    assert parse_fields('{"people": "4", "time": null}', fields) == '{"people": "4", "time": null}'
    with pytest.raises(ParseFailure, match="not JSON"):
        parse_fields("four people", fields)
    with pytest.raises(ParseFailure, match="outside the spec"):
        parse_fields('{"people": "4", "dog": 1}', fields)
    with pytest.raises(ParseFailure, match="required"):
        parse_fields('{"time": "7pm"}', fields)


def test_replication_settings_choose_replicas_and_min_insync_and_refuse_a_small_cluster():
    from services.common.catalog import CALLS_CAPTURED
    from services.common.kafka import replication_problem, topic_config

    prod = KafkaSettings(replication_factor=3, min_insync_replicas=2, bootstrap="127.0.0.1:9092")
    assert topic_config(CALLS_CAPTURED, prod)["min.insync.replicas"] == "2"
    assert "min.insync.replicas" not in topic_config(CALLS_CAPTURED, KafkaSettings())  # the broker's default
    assert replication_problem(3, prod) is None and replication_problem(5, prod) is None
    assert "REPLICATION_FACTOR=3 but the cluster at 127.0.0.1:9092 has 1 broker:" in replication_problem(1, prod)
    assert replication_problem(1, KafkaSettings()) is None
    with pytest.raises(ValueError, match="exceeds replication_factor"):
        KafkaSettings(replication_factor=1, min_insync_replicas=2)


def test_workers_create_their_own_topics_with_the_configured_replicas(tmp_path):
    from services.common.streams import WorkerSettings, make_app

    s = WorkerSettings(kafka=KafkaSettings(replication_factor=3), var_dir=tmp_path)
    assert make_app("judge", s).conf.topic_replication_factor == 3
