"""The simulator's service layer and settings: task identification, token use, faults, tallies.
No HTTP and a small oracle, so these stay fast."""
from __future__ import annotations

import pytest
import typer

from services.common.settings import CommonSettings, load_settings
from services.common.tasks import TaskRegistry, TaskSpec, load_tasks
from services.frontier_sim.cli import parse_latency_ms
from services.frontier_sim.oracle import ClassificationOracle, read_examples
from services.frontier_sim.replies import draft_reply
from services.frontier_sim.settings import SimSettings
from services.frontier_sim.simulator import SimError, Simulator, input_latency_ms

TASK = "banking77-intent"


@pytest.fixture(scope="module")
def tasks() -> TaskRegistry:
    registry = load_tasks(CommonSettings().tasks_file)
    extraction = TaskSpec(name="ticket-fields", kind="extraction", fields=[{"name": "amount"}])
    return TaskRegistry(tasks={**registry.tasks, extraction.name: extraction})


@pytest.fixture(scope="module")
def oracle(tasks) -> ClassificationOracle:
    settings = SimSettings()
    return ClassificationOracle(TASK, tasks.get(TASK).labels, read_examples(settings.data_dir)[:2000],
                                accuracy=0.92, malformed_rate=0.0)


def make_simulator(tasks, oracle, **overrides) -> Simulator:
    return Simulator(SimSettings(**overrides), tasks, {TASK: oracle})


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_task_from_header_metadata_or_system_prompt(tasks, oracle):
    sim = make_simulator(tasks, oracle)
    spec = tasks.get(TASK)
    assert sim.read_request([user("card?")], TASK, None).task is spec
    assert sim.read_request([user("card?")], None, {"task": TASK}).task is spec
    assert sim.read_request([{"role": "system", "content": spec.prompt()}, user("card?")], None, None).task is spec
    draft = [{"role": "system", "content": tasks.get("draft-reply").system_prompt}, user("My parcel is late.")]
    assert sim.read_request(draft, None, None).task.name == "draft-reply"
    assert sim.read_request([user("hello")], None, None).task is None


def test_requests_it_cannot_answer_are_refused(tasks, oracle):
    sim = make_simulator(tasks, oracle)
    with pytest.raises(SimError) as unknown:
        sim.read_request([user("x")], "no-such-task", None)
    assert unknown.value.status == 404 and "no-such-task" in unknown.value.message
    with pytest.raises(SimError, match="extraction"):
        sim.read_request([user('{"amount": 3}')], "ticket-fields", None)
    with pytest.raises(SimError, match="no message with role 'user'"):
        sim.read_request([{"role": "system", "content": "x"}], TASK, None)
    assert sim.stats()["errors_by_kind"]["bad_request"] == 3


def test_a_classification_answer_is_a_label_with_token_use(tasks, oracle):
    sim = make_simulator(tasks, oracle)
    completion = sim.answer(sim.read_request([user("I am still waiting on my card?")], TASK, None))
    assert completion.content in tasks.get(TASK).labels and completion.finish_reason == "stop"
    assert completion.prompt_tokens > len(tasks.get(TASK).prompt()) / 4  # the task's prompt is counted
    assert completion.completion_tokens >= 1
    stats = sim.stats()
    assert stats["simulator"] is True and stats["graded_answers"] == 1 and stats["answers"] == 1


def test_max_tokens_cuts_the_answer(tasks, oracle):
    sim = make_simulator(tasks, oracle)
    completion = sim.answer(sim.read_request([user("Please help, my parcel is late.")], "draft-reply", None), 5)
    assert completion.finish_reason == "length" and completion.completion_tokens == 5
    assert len(completion.content) <= 20


def test_draft_replies_vary_with_the_input_and_repeat_for_the_same_input():
    a = draft_reply("draft-reply", "My card was charged twice.", 0)
    assert a == draft_reply("draft-reply", "My card was charged twice.", 0)
    assert '"My card was charged twice"' in a
    replies = {draft_reply("draft-reply", f"Question number {i}", 0) for i in range(20)}
    assert len(replies) == 20


def test_fault_from_header_or_configured_rate(tasks, oracle):
    sim = make_simulator(tasks, oracle)
    assert sim.draw_fault("429") == "429" and sim.draw_fault(None) is None
    with pytest.raises(SimError, match="X-Sim-Fault"):
        sim.draw_fault("teapot")
    always = make_simulator(tasks, oracle, fault_rate_garbage=1.0)
    assert {always.draw_fault(None) for _ in range(10)} == {"garbage"}
    assert always.stats()["errors_by_kind"]["garbage"] == 10


def test_latency_stays_in_the_configured_range(tasks, oracle):
    sim = make_simulator(tasks, oracle, latency_min_ms=200, latency_max_ms=250)
    assert all(0.2 <= sim.draw_latency_s() <= 0.25 for _ in range(100))


def test_latency_per_input_is_a_function_of_the_input_not_the_arrival_order(tasks, oracle):
    sim = make_simulator(tasks, oracle, latency_min_ms=400, latency_max_ms=900, latency_per_input=True)
    texts = ["my card did not arrive", "How do I top up?", "  My card did NOT arrive  ", "where is my money"]
    chats = [sim.read_request([user(t)], TASK, None) for t in texts]
    first = [sim.draw_latency_s(c) for c in chats]
    again = [sim.draw_latency_s(c) for c in reversed(chats)][::-1]
    assert first == again and all(0.4 <= s <= 0.9 for s in first)
    assert first[0] == first[2] and len({first[0], first[1], first[3]}) == 3  # normalised input, distinct inputs
    assert first[0] == input_latency_ms(TASK, texts[0], 0, 400, 900) / 1000
    reseeded = make_simulator(tasks, oracle, latency_min_ms=400, latency_max_ms=900, latency_per_input=True, seed=1)
    assert reseeded.draw_latency_s(chats[0]) != first[0]
    arrival = make_simulator(tasks, oracle, latency_min_ms=400, latency_max_ms=900)  # the default: arrival order
    assert len({arrival.draw_latency_s(chats[0]) for _ in range(5)}) == 5


def test_report_says_it_is_a_simulator(tasks, oracle):
    assert "SIMULATED frontier model" in make_simulator(tasks, oracle).report()


def test_bad_settings_fail_naming_the_variable(monkeypatch):
    monkeypatch.setenv("GRADUATE_SIM_LATENCY_MIN_MS", "1000")
    monkeypatch.setenv("GRADUATE_SIM_ACCURACY", "1.5")
    with pytest.raises(SystemExit) as exc:
        load_settings(SimSettings)
    assert "GRADUATE_SIM_LATENCY_MAX_MS" in str(exc.value) and "GRADUATE_SIM_ACCURACY" in str(exc.value)
    with pytest.raises(SystemExit, match="GRADUATE_SIM_FAULT_RATE_GARBAGE"):
        load_settings(SimSettings, latency_min_ms=0, accuracy=0.9, fault_rate_500=0.6, fault_rate_garbage=0.6)


def test_latency_flag_parses():
    assert parse_latency_ms("400-900") == (400.0, 900.0)
    assert parse_latency_ms("5") == (5.0, 5.0)
    for bad in ("900-400", "fast", "-5"):
        with pytest.raises(typer.BadParameter):
            parse_latency_ms(bad)
