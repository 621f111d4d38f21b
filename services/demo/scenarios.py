"""The demo's data sets: per scenario, the task it exercises, its inputs with their gold answers, and
what drifts. A scenario is only data: the runner sends its inputs, reviews with its gold, narrates.

- banking77: Banking77 intents; after cutover the bank launches currency exchange, whose six
  intents were kept out of all traffic before it (the drift the watch must catch);
- hwu64: HWU64's home-assistant intents, graduated once;
- restaurant8k: Restaurant-8k booking slots, a JSON-extraction task, graduated once.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services.common.settings import REPO_ROOT

Example = tuple[str, str]  # (input text, gold answer: the label, or the JSON object of an extraction task)

CURRENCY_EXCHANGE_LAUNCH = ("exchange_rate", "exchange_via_app", "exchange_charge", "fiat_currency_support",
                            "card_payment_wrong_exchange_rate", "wrong_exchange_rate_for_cash_withdrawal")


@dataclass(frozen=True)
class Scenario:
    name: str
    task: str
    data_dir: Path
    read: Callable[[Path, str], list[Example]]  # (data folder, "train" | "test") -> examples
    launch: tuple[str, ...] = ()  # labels kept out until the drift phase (none: no drift phase)
    simulated_by_default: bool = True  # the simulator's defaults answer it (else: graduate up --sim-data)

    def examples(self, split: str, labels: int | None, seed: int) -> list[Example]:
        """The split's examples in a seeded order, limited to the first `labels` labels (quick runs)."""
        rows = self.read(self.data_dir, split)
        if labels is not None and self.read is read_labelled_csv:  # an extraction answer is no label
            keep = sorted({gold for _, gold in rows} - set(self.launch))[:labels] + list(self.launch)
            rows = [r for r in rows if r[1] in keep]
        random.Random(f"{seed}-{split}").shuffle(rows)
        return rows


def read_labelled_csv(folder: Path, split: str) -> list[Example]:
    with (folder / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        return [(row["text"].strip(), row["category"].strip()) for row in csv.DictReader(f)]


def read_restaurant8k(folder: Path, split: str) -> list[Example]:
    from services.frontier_sim.extraction import fields_json, read_span_file

    fields = ("people", "time", "date", "first_name", "last_name")
    path = folder / ("train_0.json" if split == "train" else "test.json")
    return [(e.text, fields_json(e.values(fields), fields)) for e in read_span_file(path)]


SCENARIOS = {
    "banking77": Scenario("banking77", "banking77-intent", REPO_ROOT / "data" / "banking77", read_labelled_csv,
                          launch=CURRENCY_EXCHANGE_LAUNCH),
    "hwu64": Scenario("hwu64", "hwu64-intent", REPO_ROOT / "data" / "hwu64", read_labelled_csv,
                      simulated_by_default=False),
    "restaurant8k": Scenario("restaurant8k", "restaurant8k-booking", REPO_ROOT / "data" / "restaurant8k",
                             read_restaurant8k),
}


def scenario_named(name: str) -> Scenario:
    """A scenario by its name or its task's name; ValueError lists the known ones."""
    for s in SCENARIOS.values():
        if name in (s.name, s.task):
            return s
    raise ValueError(f"unknown demo scenario {name!r}; one of: {', '.join(SCENARIOS)}")
