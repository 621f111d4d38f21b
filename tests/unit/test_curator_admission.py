"""The curator's admission (pure): what a hand-produced CapturedCall may put into the dataset."""
from __future__ import annotations

import pytest

from services.common.contracts import CapturedCall
from services.common.tasks import FieldSpec, RedactionSpec, TaskRegistry, TaskSpec
from services.curator.admission import Admission, Refused, producer_of

INTENT = TaskSpec(name="intent", kind="classification", labels=("card_arrival", "card_linking"))
STRICT = TaskSpec(name="strict", kind="classification", labels=("yes", "no"),
                  redaction=RedactionSpec(captured="refuse"))
FIELDS = TaskSpec(name="booking", kind="extraction", fields=(FieldSpec(name="people"), FieldSpec(name="time")))
ADMISSION = Admission.of(TaskRegistry(tasks={t.name: t for t in (INTENT, STRICT, FIELDS)}))
CARD = "4111 1111 1111 1111"


def call(**kw) -> CapturedCall:
    base = dict(call_id="c1", task="intent", input="where is my card?", output_raw="card_arrival",
                output="card_arrival", latency_ms=1.0)
    return CapturedCall(**{**base, **kw})


def test_a_good_call_is_admitted_unchanged():
    good = call(redacted=True)
    assert ADMISSION.admit(good) == good


@pytest.mark.parametrize("call_id", ["", " ", "a b", "x" * 129, "\u00e9t\u00e9"])
def test_a_missing_or_odd_call_id_is_refused(call_id):
    with pytest.raises(Refused) as exc:
        ADMISSION.admit(call(call_id=call_id))
    assert exc.value.code == "call_id"


def test_an_unknown_task_is_refused_naming_the_known_ones():
    with pytest.raises(Refused, match="'nope' is not in the task specs") as exc:
        ADMISSION.admit(call(task="nope"))
    assert exc.value.code == "unknown_task"


def test_an_empty_input_is_refused():
    with pytest.raises(Refused) as exc:
        ADMISSION.admit(call(input="   "))
    assert exc.value.code == "empty_input"


@pytest.mark.parametrize("output", ["not_a_label", "", "card_arrival; DROP TABLE"])
def test_an_output_outside_the_label_set_is_a_parse_failure_never_a_label(output):
    admitted = ADMISSION.admit(call(output=output, output_raw=output, parse_ok=True))
    assert admitted.output is None and admitted.parse_ok is False


def test_a_label_in_another_case_is_the_canonical_label():
    assert ADMISSION.admit(call(output="CARD_LINKING")).output == "card_linking"


def test_a_parse_failure_stays_one_even_with_an_output():
    admitted = ADMISSION.admit(call(parse_ok=False, output="card_arrival"))
    assert admitted.output is None and not admitted.parse_ok


def test_extraction_output_is_checked_against_the_fields():
    ok = ADMISSION.admit(call(task="booking", output='{"people": "2"}', output_raw='{"people": "2"}'))
    assert ok.output == '{"people": "2", "time": null}'
    bad = ADMISSION.admit(call(task="booking", output='{"card": "x"}', output_raw='{"card": "x"}'))
    assert bad.output is None and not bad.parse_ok


def test_pii_left_in_by_a_producer_is_redacted_again():
    admitted = ADMISSION.admit(call(input=f"card {CARD}, mail jane.doe@example.com", redacted=False))
    assert admitted.input == "card <CARD>, mail <EMAIL>" and admitted.redacted


def test_a_task_that_requires_redaction_refuses_pii():
    with pytest.raises(Refused, match="CARD x1, EMAIL x1") as exc:
        ADMISSION.admit(call(task="strict", input=f"card {CARD}, mail jane.doe@example.com", output="yes",
                             output_raw="yes", redacted=False))
    assert exc.value.code == "unredacted"
    clean = call(task="strict", input="is it done?", output="yes", output_raw="yes", redacted=False)
    assert ADMISSION.admit(clean) == clean


def test_the_producer_label_is_bounded():
    assert producer_of(call(trace={"router": "router-1", "caller": "svc"})) == "router:router-1"
    assert producer_of(call(trace={"caller": "billing"})) == "billing"
    assert producer_of(call()) == "unknown"
    assert producer_of(call(trace={"caller": "x" * 500})) == "other"


def test_curate_remembers_an_input_and_answer_but_checks_every_call_id_and_timestamp(monkeypatch):
    """`Admission.curate` is admit + curate_call; what it remembers per (task, input, answer) must
    not change a result, nor let a bad call_id or a refused record through the second time."""
    from datetime import datetime, timezone

    from services.curator import admission as module
    from services.curator.logic import curate_call

    admission = Admission.of(TaskRegistry(tasks={t.name: t for t in (INTENT, STRICT, FIELDS)}))
    calls = [call(), call(call_id="c2", ts=datetime(2026, 1, 2, tzinfo=timezone.utc)),
             call(call_id="c3", input=f"card {CARD} lost"), call(call_id="c4", input=f"card {CARD} lost"),
             call(call_id="c5", output_raw="maybe", output="maybe"), call(call_id="c6", parse_ok=False, output=None),
             call(call_id="c7", task="booking", output_raw='{"people": "2"}', output='{"people": "2"}')]
    for _ in range(2):  # cold, then remembered
        for c in calls:
            assert admission.curate(c, 0.3) == curate_call(admission.admit(c), 0.3)
    assert len(admission.curated) == 5
    for bad in (call(call_id="a b"), call(call_id="s1", task="strict", input=f"card {CARD}", output_raw="yes",
                                          output="yes")):
        for _ in range(2):
            with pytest.raises(Refused):
                admission.curate(bad, 0.3)
    monkeypatch.setattr(module, "INPUTS_CACHED", 3)
    for i in range(10):
        admission.curate(call(call_id=f"n{i}", input=f"input {i}"), 0.3)
    assert len(admission.curated) == 3 and ("intent", "input 9", "card_arrival", "card_arrival", True, 0.3) \
        in admission.curated
