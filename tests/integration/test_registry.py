"""Registry mode against a real Confluent-API schema registry: Apicurio Registry started by
deploy/local/apicurio/apicurio.sh (or the one GRADUATE_SCHEMA_REGISTRY_URL names). Every topic's
records, written in the Confluent wire format, are read back by Confluent's own deserializer,
Flink SQL's avro-confluent format, `graduate topics tail` and kcat (where built with Avro); the
registry refuses an incompatible schema change."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from services.common.catalog import CATALOG, DISAGREEMENTS, MODELS, topic_name
from services.common.codec import Codec
from services.common.registry import RegistryClient, RegistryConfig, SchemaRefused, schema_text
from services.common.settings import REPO_ROOT
from tests.integration.test_consumer_guide import GUIDE, examples_for, snippet
from tests.support import produce

pytestmark = pytest.mark.integration

APICURIO = REPO_ROOT / "deploy" / "local" / "apicurio" / "apicurio.sh"


@pytest.fixture(scope="module")
def registry_url():
    """The registry the environment names, else a local Apicurio Registry for this module."""
    if os.environ.get("GRADUATE_SCHEMA_REGISTRY_URL"):
        yield os.environ["GRADUATE_SCHEMA_REGISTRY_URL"]
        return
    was_running = subprocess.run(["bash", str(APICURIO), "status"], capture_output=True).returncode == 0
    subprocess.run(["bash", str(APICURIO), "start"], check=True, timeout=900)
    try:
        yield subprocess.run(["bash", str(APICURIO), "url"], capture_output=True, text=True, check=True).stdout.strip()
    finally:
        if not was_running:
            subprocess.run(["bash", str(APICURIO), "stop"], check=True, timeout=120)


@pytest.fixture
def config(registry_url) -> RegistryConfig:
    return RegistryConfig(registry_url, os.environ.get("GRADUATE_SCHEMA_REGISTRY_USERNAME"),
                          os.environ.get("GRADUATE_SCHEMA_REGISTRY_PASSWORD"))


@pytest.fixture
async def written(kafka_settings, namespace, topics, config):
    codec = Codec(registry=config, namespace=namespace)
    ids = await codec.register_schemas(compatibility="BACKWARD_TRANSITIVE")
    for spec in CATALOG:
        await produce(kafka_settings, codec, topic_name(spec, namespace),
                      [(f"k{i}", e) for i, e in enumerate(examples_for(spec))])
    return namespace, ids


async def test_every_subject_is_registered_with_its_compatibility(written, config):
    namespace, ids = written
    async with RegistryClient(config) as client:
        subjects = set(await client.subjects())
        for spec in CATALOG:
            subject = f"{topic_name(spec, namespace)}-value"
            assert subject in subjects
            assert await client.compatibility(subject) == "BACKWARD_TRANSITIVE"
            text = json.loads(await client.schema_text(ids[subject]))
            assert text.get("doc") and text["name"] == spec.value.__name__  # the full text, docs kept


async def test_confluent_deserializer_reads_every_topic(kafka_settings, written, registry_url):
    namespace, _ = written
    for spec in CATALOG:
        expected = examples_for(spec)
        scope = {"BOOTSTRAP": kafka_settings.bootstrap, "TOPIC": topic_name(spec, namespace),
                 "EXPECTED": len(expected), "REGISTRY_URL": registry_url}
        exec(snippet("confluent-kafka-registry"), scope)
        got = sorted((spec.value.model_validate(r) for r in scope["records"]), key=repr)
        assert got == sorted(expected, key=repr), spec.name


async def test_kcat_decodes_every_topic_with_the_registry(kafka_settings, written, registry_url):
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: `make tools` installs it"
    version = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10).stdout
    if "Avro" not in version:
        pytest.skip(f"this kcat lacks Avro/Schema-Registry support ({version.splitlines()[3].strip()})")
    namespace, _ = written
    for spec in CATALOG:
        out = subprocess.run([kcat, "-b", kafka_settings.bootstrap, "-C", "-t", topic_name(spec, namespace),
                              "-o", "beginning", "-e", "-q", "-s", "value=avro", "-r", registry_url, "-f", "%s\n"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        values = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(values) == len(examples_for(spec)), spec.name


async def test_the_registry_refuses_an_incompatible_change(config):
    subject = f"t{uuid.uuid4().hex[:10]}.graduate.disagreements-value"
    current = json.loads(Codec().schema_for(DISAGREEMENTS.value).text)
    breaking = {**current, "fields": current["fields"] + [{"name": "severity", "type": "int"}]}  # no default
    compatible = {**current, "fields": current["fields"] + [{"name": "severity", "type": "int", "default": 0}]}
    async with RegistryClient(config) as client:
        await client.register(subject, schema_text(current))
        await client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
        assert not await client.is_compatible(subject, schema_text(breaking))
        with pytest.raises(SchemaRefused):
            await client.register(subject, schema_text(breaking))
        assert await client.register(subject, schema_text(compatible)) > 0


async def test_topics_tail_decodes_registry_records(kafka_settings, written, registry_url):
    """A fresh process knows no ids: it fetches each writer schema from the registry by id."""
    import sys

    namespace, _ = written
    env = {**os.environ, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap, "GRADUATE_TOPIC_NAMESPACE": namespace,
           "GRADUATE_SCHEMA_REGISTRY_URL": registry_url}
    out = subprocess.run([sys.executable, "-m", "services.cli", "topics", "tail", "models", "--json"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(r["error"] is None for r in lines)
    got = sorted((MODELS.value.model_validate(r["value"]) for r in lines), key=repr)
    assert got == sorted(examples_for(MODELS), key=repr)


# Runs inside .venv-readers: the guide's Flink SQL with this test's addresses, then a bounded query.
FLINK_DRIVER = '''
import json, os, re, sys
from pyflink.table import EnvironmentSettings, TableEnvironment
guide, bootstrap, topic, registry, jars = sys.argv[1:6]
text = open(guide).read()
sql = re.search(r"<!-- snippet: flink-sql -->\\n```sql\\n(.*?)```", text, re.S).group(1)
sql = (sql.replace("'graduate.disagreements'", f"'{topic}'").replace("localhost:9092", bootstrap)
       .replace("http://localhost:9097/apis/ccompat/v6", registry))
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
env.get_config().set("pipeline.jars", jars)
env.get_config().set("parallelism.default", "1")
env.execute_sql(sql)
with env.execute_sql("SELECT call_id, task, small_output, confidence, ts, differing_fields FROM disagreements").collect() as rows:
    for r in rows:
        print("ROW " + json.dumps(list(r), default=str), flush=True)
'''


@pytest.mark.slow
async def test_flink_sql_snippet_reads_disagreements_through_the_registry(kafka_settings, written, registry_url,
                                                                          tmp_path):
    python = REPO_ROOT / ".venv-readers" / "bin" / "python"
    m2 = Path.home() / ".m2" / "repository" / "org" / "apache" / "flink"
    jars = [m2 / "flink-sql-connector-kafka" / "5.0.0-2.2" / "flink-sql-connector-kafka-5.0.0-2.2.jar",
            m2 / "flink-sql-avro-confluent-registry" / "2.2.0" / "flink-sql-avro-confluent-registry-2.2.0.jar"]
    missing = [str(p) for p in [python, *jars] if not p.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make tools` installs PyFlink and fetches Flink's jars")
    namespace, _ = written
    driver = tmp_path / "flink_driver.py"
    driver.write_text(FLINK_DRIVER)
    run = subprocess.run([str(python), str(driver), str(GUIDE), kafka_settings.bootstrap,
                          topic_name(DISAGREEMENTS, namespace), registry_url, ";".join(f"file://{j}" for j in jars)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = sorted(json.loads(line[4:]) for line in run.stdout.splitlines() if line.startswith("ROW "))
    want = sorted([e.call_id, e.task, e.small_output, e.confidence, e.ts.strftime("%Y-%m-%d %H:%M:%S"),
                   e.differing_fields] for e in examples_for(DISAGREEMENTS))
    assert [r[:4] + [r[4][:19]] + r[5:] for r in rows] == want


async def test_the_registry_accepts_every_released_schema_then_the_current_one(config):
    """The guard for schema changes: a change to schemas/*.avsc that breaks BACKWARD_TRANSITIVE
    compatibility with any release under schemas/released/ is refused by the registry, here."""
    from services.common.codec import schemas_dir

    run = uuid.uuid4().hex[:10]
    codec = Codec()
    changelog = (schemas_dir() / "CHANGELOG.md").read_text().split("\n## v1", 1)[0]  # the Unreleased part
    async with RegistryClient(config) as client:
        for spec in CATALOG:
            name = spec.value.__name__
            subject = f"t{run}.{spec.name}-value"
            released = sorted(schemas_dir().glob(f"released/*/{name}.avsc"), key=lambda p: p.parent.name)
            if not released:  # a record new since the last release: only the changelog may say so
                assert f"`{name}` (new" in changelog, \
                    f"{name} was never released and schemas/CHANGELOG.md does not list it as new"
                await client.register(subject, codec.schema_for(spec.value).text)
                continue
            await client.register(subject, schema_text(json.loads(released[0].read_text())))
            await client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
            for path in released[1:]:
                await client.register(subject, schema_text(json.loads(path.read_text())))
            await client.register(subject, codec.schema_for(spec.value).text)  # raises SchemaRefused if broken
