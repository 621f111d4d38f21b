"""The simulated frontier on the extraction task (Restaurant-8k): deterministic, per-field error
rates as configured, errors where LLMs make them, malformed JSON refused by the task's parser."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from services.common.settings import CommonSettings
from services.common.tasks import ParseFailure, load_tasks
from services.frontier_sim.extraction import (CONFUSABLE, ExtractionOracle, SpanExample, hardness, malform_json,
                                              read_span_examples, shift_boundary)
from services.frontier_sim.settings import DEFAULT_FIELD_ERROR_RATES, SimSettings
from services.frontier_sim.simulator import SimError, Simulator, build_extraction_oracle, build_simulator

TASK = "restaurant8k-booking"


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(CommonSettings().tasks_file)


@pytest.fixture(scope="module")
def spec(tasks):
    return tasks.get(TASK)


@pytest.fixture(scope="module")
def examples():
    return read_span_examples(SimSettings().extraction_data_dir)


@pytest.fixture(scope="module")
def oracle(spec, examples) -> ExtractionOracle:
    return ExtractionOracle(TASK, spec.fields, examples, error_rates=DEFAULT_FIELD_ERROR_RATES, malformed_rate=0.02)


@pytest.fixture(scope="module")
def answers(oracle):
    return {key: oracle.answer(e.text) for key, e in oracle.examples.items()}


def test_spans_are_read_with_implicit_start_and_trimmed(tmp_path):
    rows = [{"userInput": {"text": "13"}, "context": {"requestedSlots": ["time"]},
             "labels": [{"slot": "time", "valueSpan": {"endIndex": 2}}]},
            {"userInput": {"text": "Book for quarter to 8pm"},
             "labels": [{"slot": "time", "valueSpan": {"startIndex": 8, "endIndex": 23}}]},
            {"userInput": {"text": "Hello"}}]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    bare, phrase, empty = read_span_examples(tmp_path)
    assert bare.values(["time"]) == {"time": "13"} and bare.requested == ("time",)
    assert phrase.values(["time", "people"]) == {"time": "quarter to 8pm", "people": None}
    assert empty.spans == {}


def test_restaurant8k_is_all_there(examples):
    assert len(examples) == 8198 + 3731
    counts = Counter(f for e in examples for f in e.spans)
    assert set(counts) == {"people", "time", "date", "first_name", "last_name"} and min(counts.values()) > 1000


def test_answers_are_deterministic_and_json_of_every_field(oracle, spec):
    text = "We are 4 and would like a table at 7pm tomorrow, the name is Ann Lee"
    first, again = oracle.answer(text), oracle.answer(text)
    assert first == again and first.gold is None  # not in the data set: a plain reading, ungraded
    assert json.loads(first.content) == first.values
    assert first.values == {"people": None, "time": "7pm", "date": "tomorrow", "first_name": "Ann", "last_name": "Lee"}
    known = next(iter(oracle.examples.values()))
    assert oracle.answer(known.text) == oracle.answer("  " + known.text.upper() + " ")  # same normalised input
    assert set(json.loads(spec.parse_output(oracle.answer(known.text).content))) == {f.name for f in spec.fields}


def test_realised_per_field_error_rates_match_the_configured_ones(oracle, answers):
    present, wrong = Counter(), Counter()
    for v in answers.values():
        for f, gold in v.gold.items():
            if gold is not None:
                present[f] += 1
                wrong[f] += v.values[f] != gold
    for f, rate in DEFAULT_FIELD_ERROR_RATES.items():
        assert oracle.expected_error_rate(f) == pytest.approx(rate, abs=1e-6)
        assert wrong[f] / present[f] == pytest.approx(rate, abs=0.015), (f, wrong[f], present[f])


def test_errors_are_the_ones_llms_make(oracle, answers):
    kinds = Counter()
    for key, v in answers.items():
        example = oracle.examples[key]
        for f, value in v.values.items():
            assert value is None or value in example.text  # never an invented value
        for f, kind in v.error_kinds.items():
            kinds[kind] += 1
            if kind == "confuse":
                assert v.values[f] is None and v.values[CONFUSABLE[f]] == v.gold[f]
            elif kind == "miss":
                assert v.values[f] is None
            else:
                assert v.values[f] != v.gold[f] and (v.values[f] in v.gold[f] or v.gold[f] in v.values[f])
    assert all(kinds[k] > 10 for k in ("confuse", "boundary", "miss")), kinds


def test_harder_inputs_err_more(oracle, answers):
    easy, hard = Counter(), Counter()
    for key, v in answers.items():
        example = oracle.examples[key]
        for f in example.spans:
            bucket = hard if hardness(example, f) >= 1.5 else easy
            bucket["n"] += 1
            bucket["wrong"] += f in v.wrong_fields
    assert hard["wrong"] / hard["n"] > 2 * easy["wrong"] / easy["n"]


def test_malformed_answers_are_parse_failures(oracle, answers, spec):
    malformed = [v for v in answers.values() if v.malformed]
    assert len(malformed) / len(answers) == pytest.approx(0.02, abs=0.006)
    for v in malformed:
        with pytest.raises(ParseFailure):
            spec.parse_output(v.content)
    for v in list(answers.values())[:500]:
        if not v.malformed:
            assert json.loads(spec.parse_output(v.content)) == v.values
    values = {"people": "4", "time": None, "date": None, "first_name": None, "last_name": None}
    for u in (0.0, 0.25, 0.45, 0.65, 0.95):
        with pytest.raises(ParseFailure):
            spec.parse_output(malform_json(values, spec.fields, u))


def test_boundary_shift_moves_by_a_word():
    text = "table at 7 pm for two"
    assert shift_boundary(text, (9, 13), 0.0) == (9, 17)  # "7 pm for"
    assert shift_boundary(text, (9, 13), 0.5) == (6, 13)  # "at 7 pm"
    assert shift_boundary(text, (9, 13), 0.99) == (9, 10)  # "7"
    assert shift_boundary("Smith", (0, 5), 0.3) is None


def test_the_simulator_answers_extraction_and_tallies_it(tasks):
    sim = build_simulator(SimSettings(), tasks)
    assert set(sim.oracles) == {"banking77-intent", TASK}
    spec = tasks.get(TASK)
    known = next(iter(sim.oracles[TASK].examples.values()))
    for text in (known.text, "a table for 2 people at 8pm please"):
        chat = sim.read_request([{"role": "system", "content": spec.prompt()}, {"role": "user", "content": text}],
                                None, None)
        assert chat.task is spec
        completion = sim.answer(chat)
        assert completion.task == TASK and completion.completion_tokens > 5
    stats = sim.stats()
    summary = stats["extraction"][TASK]
    assert summary["graded_answers"] == 1 and summary["ungraded_answers"] == 1
    assert summary["fields"]["people"]["configured_error_rate"] == 0.04
    assert stats["labelled_tasks"][TASK].endswith("restaurant8k")
    assert "per-field error rates" in sim.report() and "SIMULATED" in sim.report()


def test_an_extraction_task_without_data_is_not_simulated(tasks, spec):
    sim = Simulator(SimSettings(), tasks, {})
    with pytest.raises(SimError) as refused:
        sim.read_request([{"role": "user", "content": "for 2"}], TASK, None)
    assert refused.value.code == "task_not_simulated" and "extraction" in refused.value.message


def test_field_error_rates_are_settings_merged_with_the_defaults(tasks, spec, examples, monkeypatch):
    monkeypatch.setenv("GRADUATE_SIM_FIELD_ERROR_RATES", '{"date": 0.2}')
    oracle = build_extraction_oracle(SimSettings(), spec)
    assert oracle.error_rates == DEFAULT_FIELD_ERROR_RATES | {"date": 0.2}
    monkeypatch.setenv("GRADUATE_SIM_FIELD_ERROR_RATES", '{"date": 1.5}')
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        SimSettings()
    with pytest.raises(ValueError, match="outside the task's fields"):
        ExtractionOracle("t", spec.fields[:1], [SpanExample("Ann", {"first_name": (0, 3)})], error_rates={})
