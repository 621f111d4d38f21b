"""The reliability suite's ledger: every test writes one row of docs/RELIABILITY.md's table (fault or
input, what was tried, what was lost, what the user saw) after its assertions passed.

Each run writes `<GRADUATE_VAR_DIR or var>/reliability/results.json` and `results.md`; with
GRADUATE_RELIABILITY_DOC=1 the table between the markers in docs/RELIABILITY.md is replaced too.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from services.common.settings import REPO_ROOT

DOC = REPO_ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- reliability-table:begin -->", "<!-- reliability-table:end -->"


@dataclass
class Row:
    fault: str
    tried: str
    lost: str
    user_saw: str
    tests: list[str]


class Ledger:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.outcomes: dict[str, str] = {}
        self.started = time.time()

    def row(self, request: pytest.FixtureRequest, fault: str, tried: str, lost: str, user_saw: str) -> None:
        """One row per fault: the cases of a parametrized test share theirs (the last one's counts)."""
        node = request.node.nodeid
        tests = self.rows[fault].tests if fault in self.rows else []
        self.rows[fault] = Row(fault, tried, lost, user_saw, [*tests, node])

    def passed(self, row: Row) -> bool:
        return all(self.outcomes.get(t) in ("passed", "skipped") for t in row.tests)


LEDGER = Ledger()


@pytest.fixture
def ledger(request):
    """`ledger(fault, tried, lost, user_saw)`: call it once the test's assertions have passed."""
    return lambda *args: LEDGER.row(request, *args)


def pytest_runtest_logreport(report):
    if "tests/reliability/" in report.nodeid and (report.when == "call" or report.outcome != "passed"):
        LEDGER.outcomes[report.nodeid] = report.outcome if report.when == "call" else f"{report.outcome} ({report.when})"


def render(rows: list[Row], failed: list[str]) -> str:
    out = ["| fault or input | what was tried (counts) | what was lost | what the user saw | test |",
           "|---|---|---|---|---|"]
    for r in rows:
        test = r.tests[0].split("tests/reliability/", 1)[-1].split("[", 1)[0]
        out.append(f"| {r.fault} | {r.tried} | {r.lost} | {r.user_saw} | `{test}` |")
    for nodeid in failed:
        out.append(f"| **FAILED** (see Findings) | | | | `{nodeid.split('tests/reliability/', 1)[-1]}` |")
    knobs = {k: v for k, v in sorted(os.environ.items())
             if k.startswith("GRADUATE_RELIABILITY_") and k != "GRADUATE_RELIABILITY_DOC"}
    out.append("")
    out.append(f"Run of {time.strftime('%Y-%m-%d %H:%M', time.gmtime(LEDGER.started))} UTC on {platform.node()} "
               f"({os.cpu_count()} CPUs), {time.time() - LEDGER.started:.0f} s, knobs: "
               + (", ".join(f"{k}={v}" for k, v in knobs.items()) or "the defaults") + ".")
    return "\n".join(out)


def pytest_sessionfinish(session, exitstatus):
    if not LEDGER.outcomes:
        return
    rows = [r for r in LEDGER.rows.values() if LEDGER.passed(r)]
    failed = sorted(n for n, o in LEDGER.outcomes.items() if o.startswith("failed"))
    folder = Path(os.environ.get("GRADUATE_VAR_DIR", REPO_ROOT / "var")) / "reliability"
    folder.mkdir(parents=True, exist_ok=True)
    table = render(rows, failed)
    (folder / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "failed": failed,
                                                     "outcomes": LEDGER.outcomes}, indent=2) + "\n")
    (folder / "results.md").write_text(table + "\n")
    if os.environ.get("GRADUATE_RELIABILITY_DOC") == "1" and DOC.exists():
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
