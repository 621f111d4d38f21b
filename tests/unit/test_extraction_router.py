"""The router's small path for an extraction task: the model's JSON served as the answer, and the
frontier asked when any field is below the threshold or the JSON is not the task's."""
from __future__ import annotations

import json

import pytest

from services.common.contracts import CapturedCall, RouterOutcome
from services.common.tasks import TaskSpec
from services.common.triton import SmallAnswer
from services.router.logic import route, small_fallback_reason
from tests.unit.test_router_logic import FakeFrontier, FakeSmall, call, ports, small

BOOKING = TaskSpec(name="booking", kind="extraction", system_prompt="Answer JSON.",
                   fields=[{"name": "people", "required": True}, {"name": "time"}])
SMALL_JSON = json.dumps({"people": "4", "time": "7pm"}, sort_keys=True)
FRONTIER_JSON = '{"people": "four", "time": "7pm"}'


@pytest.mark.parametrize("label,confidence,reason", [
    (SMALL_JSON, 0.9, None),
    (SMALL_JSON, 0.59, "low_confidence"),  # the least confident field is below the threshold
    ('{"people": null, "time": "7pm"}', 0.99, "fields_not_in_task"),  # a required field is missing
    ('{"people": "4", "table": "9"}', 0.99, "fields_not_in_task"),
    ("4 people", 0.99, "fields_not_in_task"),
])
def test_extraction_fallback_reasons(label, confidence, reason):
    assert small_fallback_reason(BOOKING, SmallAnswer(label, confidence), 0.6) == reason


async def test_a_confident_extraction_is_served_as_the_json_of_its_fields():
    p = ports(small=FakeSmall(label=SMALL_JSON, confidence=0.8), frontier=FakeFrontier(FRONTIER_JSON))
    served = await route(call(BOOKING, "table for 4 at 7pm"), small(), p)
    assert (served.served_by, served.output, served.content) == ("small", SMALL_JSON, SMALL_JSON)
    assert p.frontier.calls == [] and p.capture.of(CapturedCall) == []


async def test_an_unsure_field_falls_back_to_the_frontier_whose_json_is_captured():
    p = ports(small=FakeSmall(label=SMALL_JSON, confidence=0.3), frontier=FakeFrontier(FRONTIER_JSON))
    served = await route(call(BOOKING, "table for four at 7pm"), small(), p)
    assert (served.served_by, served.fallback_reason) == ("fallback", "low_confidence")
    assert json.loads(served.output) == {"people": "four", "time": "7pm"}
    [captured] = p.capture.of(CapturedCall)
    assert (captured.source, captured.parse_ok, captured.output) == (
        "fallback", True, '{"people": "four", "time": "7pm"}')
    [outcome] = p.capture.of(RouterOutcome)
    assert (outcome.served_by, outcome.confidence, outcome.fallback_reason) == ("fallback", 0.3, "low_confidence")
