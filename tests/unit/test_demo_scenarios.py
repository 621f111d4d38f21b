"""The demo's scenarios are only data: each names a configured task and reads its gold answers."""
import json

import pytest

from services.common.settings import REPO_ROOT
from services.common.tasks import load_tasks
from services.demo.scenarios import CURRENCY_EXCHANGE_LAUNCH, SCENARIOS, scenario_named


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_is_a_configured_task_whose_gold_parses(name):
    scenario = SCENARIOS[name]
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(scenario.task)
    examples = scenario.examples("test", 4, seed=1)
    assert examples and all(spec.parse_output(gold) == gold for _, gold in examples[:50])
    assert scenario_named(scenario.task) is scenario


def test_a_quick_run_keeps_the_first_labels_and_the_launch():
    labels = {gold for _, gold in SCENARIOS["banking77"].examples("train", 3, seed=1)}
    assert set(CURRENCY_EXCHANGE_LAUNCH) <= labels and len(labels) == 3 + len(CURRENCY_EXCHANGE_LAUNCH)
    assert SCENARIOS["hwu64"].examples("train", 2, seed=1) == SCENARIOS["hwu64"].examples("train", 2, seed=1)
    with pytest.raises(ValueError, match="one of: banking77, hwu64, restaurant8k"):
        scenario_named("nope")
    booking = SCENARIOS["restaurant8k"].examples("train", 2, seed=1)  # extraction: no label filter
    assert len({gold for _, gold in booking}) > 2 and json.loads(booking[0][1])
