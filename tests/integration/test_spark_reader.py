"""The consumer guide's Spark Structured Streaming snippets, verbatim, on the real broker: pyspark
(its own virtual environment, .venv-readers from `make tools`) reads single-object disagreements
with Spark's own Kafka source and from_avro."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from services.common.catalog import DISAGREEMENTS, topic_name
from services.common.codec import Codec, schemas_dir
from services.common.settings import REPO_ROOT
from tests.integration.test_consumer_guide import GUIDE, examples_for
from tests.support import produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READERS_PYTHON = REPO_ROOT / ".venv-readers" / "bin" / "python"

# Runs inside .venv-readers: the guide's two snippets, then the stream drained once into a table.
DRIVER = '''
import json, re, sys
guide, BOOTSTRAP, TOPIC, SCHEMAS_DIR = sys.argv[1:5]
text = open(guide).read()
def snippet(name):
    return re.search(r"<!-- snippet: " + re.escape(name) + r" -->\\n```\\w+\\n(.*?)```", text, re.S).group(1)
exec(snippet("spark-session"))
exec(snippet("spark-disagreements"))
query = disagreements.writeStream.format("memory").queryName("d").trigger(availableNow=True).start()
query.awaitTermination()
for row in spark.sql("select * from d").collect():
    print("ROW " + json.dumps(row.asDict(), default=str), flush=True)
spark.stop()
'''


async def test_spark_snippet_reads_disagreements(kafka_settings, namespace, topics, tmp_path):
    if not READERS_PYTHON.exists():
        pytest.fail(f"{READERS_PYTHON} is missing: `make tools` makes it (pyspark for the guide's Spark snippet)")
    topic = topic_name(DISAGREEMENTS, namespace)
    expected = examples_for(DISAGREEMENTS)
    await produce(kafka_settings, Codec(), topic, [(f"k{i}", e) for i, e in enumerate(expected)])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": (
        f"--master local[1] --driver-memory 512m --conf spark.ui.enabled=false "
        f"--conf spark.sql.shuffle.partitions=1 --conf spark.jars.ivy={os.path.expanduser('~/.cache/graduate/ivy')} "
        f"--conf spark.sql.session.timeZone=UTC pyspark-shell")}
    run = subprocess.run([str(READERS_PYTHON), str(driver), str(GUIDE), kafka_settings.bootstrap, topic,
                          str(schemas_dir())], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = sorted((json.loads(line[4:]) for line in run.stdout.splitlines() if line.startswith("ROW ")),
                  key=lambda r: r["kafka_key"])
    assert [r["kafka_key"] for r in rows] == ["k0", "k1"]
    for row, want in zip(rows, expected):
        assert (row["call_id"], row["task"], row["small_output"], row["confidence"], row["differing_fields"]) == (
            want.call_id, want.task, want.small_output, want.confidence, want.differing_fields)
        assert row["ts"].startswith(want.ts.strftime("%Y-%m-%d %H:%M:%S"))
