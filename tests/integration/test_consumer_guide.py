"""docs/CONSUMERS.md's runnable snippets, verbatim, against the real broker (single-object mode):
kcat's raw dump decoded by the fastavro snippet, confluent-kafka's consumer, and
`graduate topics tail` — every catalog topic's records come back equal to what was written."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from services.common.catalog import CATALOG, DISAGREEMENTS, topic_name
from services.common.codec import Codec, schemas_dir
from services.common.settings import REPO_ROOT
from tests.support import produce
from tests.unit.test_contracts import EXAMPLES

pytestmark = pytest.mark.integration

GUIDE = REPO_ROOT / "docs" / "CONSUMERS.md"


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```\w+\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, f"no snippet {name!r} in {GUIDE}"
    return match.group(1)


def examples_for(spec) -> list:
    return [e for e in EXAMPLES if isinstance(e, spec.value)]


def need_kcat() -> str:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed: `make tools` installs Debian's kcat")
    return kcat


@pytest.fixture
async def written(kafka_settings, namespace, topics):
    """Every topic holds the examples of its contract, in single-object encoding."""
    codec = Codec()
    for spec in CATALOG:
        await produce(kafka_settings, codec, topic_name(spec, namespace),
                      [(f"k{i}", e) for i, e in enumerate(examples_for(spec))])
    return namespace


async def test_kcat_dump_decoded_by_the_fastavro_snippet_for_every_topic(kafka_settings, written, tmp_path):
    need_kcat()
    scope = {"SCHEMAS_DIR": str(schemas_dir())}
    exec(snippet("fastavro-decode"), scope)
    for spec in CATALOG:
        env = {**os.environ, "BOOTSTRAP": kafka_settings.bootstrap, "TOPIC": topic_name(spec, written)}
        subprocess.run(["bash", "-euo", "pipefail", "-c", snippet("kcat-raw")], cwd=tmp_path, env=env,
                       check=True, timeout=60)
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            exec(snippet("kcat-raw-decode"), scope)
        finally:
            os.chdir(cwd)
        records = scope["records"]
        assert {name for name, _ in records} == {spec.value.avro_name}, spec.name
        decoded = sorted((spec.value.model_validate(r) for _, r in records), key=repr)
        assert decoded == sorted(examples_for(spec), key=repr), spec.name


async def test_confluent_kafka_snippet_reads_disagreements(kafka_settings, written):
    expected = examples_for(DISAGREEMENTS)
    scope = {"SCHEMAS_DIR": str(schemas_dir()), "BOOTSTRAP": kafka_settings.bootstrap,
             "TOPIC": topic_name(DISAGREEMENTS, written), "EXPECTED": len(expected)}
    exec(snippet("fastavro-decode"), scope)
    exec(snippet("confluent-kafka-single-object"), scope)
    got = [DISAGREEMENTS.value.model_validate(r) for _, r in scope["records"]]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


async def test_kcat_avro_mode_needs_a_build_with_avro_support():
    """Debian's kcat lacks Avro; the guide says so. This holds the guide to the truth."""
    kcat = need_kcat()
    version = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10).stdout
    has_avro = "Avro" in version
    assert has_avro or "lacks Avro/Schema-Registry support" in GUIDE.read_text()


async def test_topics_tail_prints_every_record_decoded(kafka_settings, written):
    env = {**os.environ, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap, "GRADUATE_TOPIC_NAMESPACE": written}
    env.pop("GRADUATE_SCHEMA_REGISTRY_URL", None)
    cli = [sys.executable, "-m", "services.cli", "topics", "tail"]
    out = subprocess.run(cli + ["disagreements", "--json"], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(r["error"] is None for r in lines)
    got = sorted((DISAGREEMENTS.value.model_validate(r["value"]) for r in lines), key=repr)
    assert got == sorted(examples_for(DISAGREEMENTS), key=repr)
    assert {r["key"] for r in lines} == {"k0", "k1"}

    text = subprocess.run(cli + ["routing.decisions", "-n", "1"], env=env, capture_output=True, text=True,
                          timeout=120, check=True).stdout
    assert '"mode": "small"' in text and "gate passed" in text

    dead = subprocess.run(cli + ["deadletter", "--json"], env=env, capture_output=True, text=True,
                          timeout=120, check=True).stdout
    letter = json.loads(dead)["value"]  # its payload is not UTF-8: shown escaped, not a crash
    assert letter["payload"] == "\x00\\xff" and letter["reason"] == "unknown schema fingerprint"

    bad = subprocess.run(cli + ["no.such.topic"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a catalog topic" in bad.stdout + bad.stderr


async def test_topics_tail_shows_undecodable_records_with_the_reason(kafka_settings, written):
    from services.common.kafka import make_producer

    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic_name(DISAGREEMENTS, written), b"\xc3\x01" + b"\x00" * 8 + b"x", key=b"bad",
                                     headers=[("source", b"a test")])
    finally:
        await producer.stop()
    env = {**os.environ, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap, "GRADUATE_TOPIC_NAMESPACE": written}
    out = subprocess.run([sys.executable, "-m", "services.cli", "topics", "tail", "disagreements", "--json"],
                         env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    bad = [json.loads(line) for line in out.splitlines() if json.loads(line)["key"] == "bad"]
    assert len(bad) == 1 and "unknown schema fingerprint" in bad[0]["error"]
    assert bad[0]["headers"] == {"source": "a test"}
