"""Field-level extraction against the real Kafka and the real Triton.

1. The judge worker (`graduate worker judge`, a subprocess) reads an extraction ShadowResult whose
   answer differs from the frontier's in one field and publishes a Disagreement naming that field;
   an answer that differs only in case and whitespace is agreement; its ShadowStats count
   agreement per field.
2. The Triton client asks a model that declares FIELD_CONFIDENCE for it and names the values by
   the fields it is given, and asks a classification model exactly what it always did.

Each test has its own topic namespace (and the judge its internal topics, deleted afterwards).
"""
from __future__ import annotations

import json
import uuid

import pytest

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import CapturedCall, Disagreement, RoutingDecision, ShadowResult, ShadowStats
from services.common.triton import SmallModelClient
from tests.integration.test_shadow_judge import internal_topics, wait_for, workers  # noqa: F401 - fixtures
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

TASK = "restaurant8k-booking"
FIELDS = ("people", "time", "date", "first_name", "last_name")


def answer(**values) -> str:
    """An answer as the task spec writes it (every field, keys sorted)."""
    return json.dumps({f: values.get(f) for f in FIELDS}, sort_keys=True)


async def test_the_judge_names_the_field_that_differs(kafka_settings, codec, namespace, topics, internal_topics,
                                                      workers):  # noqa: F811
    decision = RoutingDecision(task=TASK, mode="shadow", model_version="1", triton_model="booking", threshold=0.5,
                               reason="test", decided_by="test")
    await produce(kafka_settings, codec, topic_name(catalog.ROUTING_DECISIONS, namespace), [(TASK, decision)])
    cases = {  # call id -> (input, frontier answer, small answer, field confidences)
        "x-time": ("a table for 2 at 7 pm tomorrow, name Ana Lima",
                   answer(people="2", time="7 pm", date="tomorrow", first_name="Ana", last_name="Lima"),
                   answer(people="2", time="8 pm", date="tomorrow", first_name="Ana", last_name="Lima"),
                   {"people": 0.99, "time": 0.41, "date": 0.97, "first_name": 0.95, "last_name": 0.93}),
        "x-same": ("Book 4 people  on Friday",
                   answer(people="4", date="on Friday"), answer(people=" 4 ", date="ON   friday"),
                   {"people": 0.9, "time": 0.99, "date": 0.8, "first_name": 0.99, "last_name": 0.99}),
    }
    calls = [CapturedCall(call_id=cid, task=TASK, input=text, output_raw=frontier, output=frontier, latency_ms=640.0)
             for cid, (text, frontier, _, _) in cases.items()]
    results = [ShadowResult(call_id=cid, task=TASK, model_version="1", output=small, confidence=min(conf.values()),
                            latency_ms=9.0, input=text, frontier_output=frontier, field_confidence=conf)
               for cid, (text, frontier, small, conf) in cases.items()]
    await produce(kafka_settings, codec, topic_name(catalog.CALLS_CAPTURED, namespace), [(c.call_id, c) for c in calls])
    await produce(kafka_settings, codec, topic_name(catalog.SHADOW_RESULTS, namespace),
                  [(r.call_id, r) for r in results])
    judge = workers("judge").start()

    async def disagreements():
        got = decode_all(codec, await read_topic(kafka_settings, topic_name(catalog.DISAGREEMENTS, namespace),
                                                 timeout=1), Disagreement)
        return got or None
    (d,) = await wait_for(disagreements, 180, "the disagreement", workers=(judge,))
    assert (d.call_id, d.task, d.model_version, d.differing_fields) == ("x-time", TASK, "1", ["time"])
    assert (d.frontier_output, d.small_output, d.confidence) == (cases["x-time"][1], cases["x-time"][2], 0.41)

    async def stats():
        records = await read_topic(kafka_settings, topic_name(catalog.SHADOW_STATS, namespace), timeout=1)
        latest = {r.key.decode(): codec.decode(r.value, ShadowStats) for r in records}
        s = latest.get(f"{TASK}/1")
        return s if s is not None and s.compared == 2 else None
    s = await wait_for(stats, 120, "the statistics", workers=(judge,))
    assert (s.compared, s.agreed, s.kept, s.kept_agreed) == (2, 1, 1, 1)  # x-time (0.41) falls back
    fields = json.loads(s.confusion_json)["fields"]
    assert set(fields) == set(FIELDS)
    assert (fields["time"]["compared"], fields["time"]["agreed"], fields["time"]["kept"]) == (2, 1, 1)
    assert all(fields[f]["agreed"] == 2 for f in FIELDS if f != "time")
    # the disagreement read back is exactly one, also after the stats were written (no second one)
    assert len(await disagreements()) == 1
    assert judge.stop() == 0


EXTRACTION_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "CONFIDENCE" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "FIELD_CONFIDENCE" data_type: TYPE_FP32 dims: [ -1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

# The trained extraction model's contract with a fixed rule: the first number is `people`
# (confidence 0.9), every other field is null (confidence 0.99 - 0.01 * its position).
EXTRACTION_MODEL_PY = '''
import json, re
import numpy as np
import triton_python_backend_utils as pb_utils

FIELDS = ["people", "time", "date", "first_name", "last_name"]

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            labels, confs, fields = [], [], []
            for t in texts:
                m = re.search(r"[0-9]+", t.decode("utf-8"))
                values = {f: None for f in FIELDS}
                values["people"] = m.group(0) if m else None
                per_field = [0.9 if f == "people" else 0.99 - 0.01 * i for i, f in enumerate(FIELDS)]
                labels.append([json.dumps(values, sort_keys=True).encode()])
                confs.append([min(per_field)])
                fields.append(per_field)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", np.array(labels, dtype=np.object_)),
                pb_utils.Tensor("CONFIDENCE", np.array(confs, dtype=np.float32)),
                pb_utils.Tensor("FIELD_CONFIDENCE", np.array(fields, dtype=np.float32)),
            ]))
        return responses
'''


@pytest.fixture
def extraction_model(triton_urls, model_repository):
    from tests.support_triton import load_model, unload_and_remove

    name = f"ex-{uuid.uuid4().hex[:8]}"
    (model_repository / name / "1").mkdir(parents=True)
    (model_repository / name / "config.pbtxt").write_text(EXTRACTION_CONFIG.format(name=name))
    (model_repository / name / "1" / "model.py").write_text(EXTRACTION_MODEL_PY)
    try:
        load_model(triton_urls["http"], name)
        yield name
    finally:
        unload_and_remove(triton_urls["http"], model_repository, name)


async def test_the_triton_client_returns_field_confidences_of_an_extraction_model(triton_urls, extraction_model,
                                                                                   keyword_model):
    classifier = keyword_model({"card": "card_arrival"}, "other")
    client = SmallModelClient(triton_urls["grpc"], timeout_s=10)
    try:
        answers, ms = await client.classify(extraction_model, None, ["a table for 3 please", "hello"],
                                            fields=FIELDS)
        assert ms > 0 and [json.loads(a.label)["people"] for a in answers] == ["3", None]
        assert answers[0].field_confidence == pytest.approx(
            {"people": 0.9, "time": 0.98, "date": 0.97, "first_name": 0.96, "last_name": 0.95})
        assert answers[0].confidence == pytest.approx(0.9)
        plain, _ = await client.classify(extraction_model, "1", ["a table for 3 please"])  # no fields: not asked
        assert plain[0].field_confidence is None and plain[0].label == answers[0].label
        labels, _ = await client.classify(classifier, None, ["my card", "hi"], fields=FIELDS)  # has no such output
        assert [(a.label, a.field_confidence) for a in labels] == [("card_arrival", None), ("other", None)]
    finally:
        await client.close()
