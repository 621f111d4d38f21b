"""`make bench`: run every benchmark (bench/bench_*.py), then compose bench/RESULTS.md.

    .venv/bin/python bench/run_all.py [--only processors,router] [--compose-only]

Each benchmark is its own script, run as a subprocess with its defaults, one after another (the
machine has two cores: side-by-side figures must not compete with another benchmark). Each writes
one or more JSON files to bench/results/; this harness never asserts a wall-clock limit, it
records how each run ended (ok, failed, timed out) and renders every results file it finds.

A results file is free-form JSON; the renderer knows these conventions:
- "benchmark" (title), "when", "host", "notes", "goal" (scalars, shown as text);
- a dict of dicts (e.g. "results": {"raw_read": {"msgs_per_s": …}, …}) becomes a table;
- a dict of numbers (e.g. "ratios_vs_raw": {"curator": 0.4}) becomes a two-column table, and every
  key with "ratio" in its name also goes to the summary at the top of RESULTS.md;
- an optional "headline": [{"name": …, "value": …, "goal": …}] goes to the summary as it is;
- an optional "plot": "NAME.png" (a file beside the JSON in bench/results/) is shown as an image.

A results file that this run did not rewrite (its benchmark was not run, failed, or timed out) is
marked STALE in RESULTS.md, in the summary and in its section, with the time it was measured.

bench_extraction.py (Restaurant-8k, small model vs the simulated frontier per field) is one of the
benchmarks like any other; `--only extraction` runs it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LOGS = Path(os.environ.get("GRADUATE_VAR_DIR") or ROOT / "var") / "bench"  # logs are not results
TIMEOUT_S = float(os.environ.get("GRADUATE_BENCH_TIMEOUT_S", "1800"))


def discover(only: set[str] | None) -> list[Path]:
    # bench_ood_scores reads the runs bench_quality keeps: it goes after it
    scripts = sorted(BENCH.glob("bench_*.py"), key=lambda s: (s.stem == "bench_ood_scores", s.name))
    return [s for s in scripts if only is None or s.stem.removeprefix("bench_") in only]


def wait_for_training_slot(poll_s: float = 10.0, limit_s: float = 1800.0) -> None:
    """One training at a time on this machine: wait while another `graduate train` runs."""
    started = time.monotonic()
    while subprocess.run(["pgrep", "-f", "graduate train( |$)"], stdout=subprocess.DEVNULL).returncode == 0:
        if time.monotonic() - started > limit_s:
            return
        print("  another training run is going on: waiting (one at a time)", flush=True)
        time.sleep(poll_s)


def run_one(script: Path) -> dict[str, Any]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{script.stem}.log"
    wait_for_training_slot()
    print(f"== {script.name}", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=TIMEOUT_S)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {TIMEOUT_S:.0f} s"
    seconds = time.monotonic() - started
    print(f"   {status} in {seconds:.0f} s (log {log})", flush=True)
    return {"script": script.name, "status": status, "seconds": round(seconds, 1), "log": str(log)}


# -- RESULTS.md --------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return f"`{json.dumps(v, default=str)[:120]}`"
    return str(v).replace("|", "/").replace("\n", " ")


def is_table(v: Any) -> bool:
    return isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values())


def is_pairs(v: Any) -> bool:
    return isinstance(v, dict) and v and all(isinstance(x, (int, float, str, bool)) or x is None for x in v.values())


def table(rows: dict[str, dict]) -> list[str]:
    cols: list[str] = []
    for row in rows.values():
        cols += [k for k, x in row.items() if k not in cols and not isinstance(x, (dict, list))]
    out = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for name, row in rows.items()]
    return out


def summary_rows(name: str, data: dict) -> list[tuple[str, str, str]]:
    rows = [(name, str(h.get("name")), fmt(h.get("value")) + (f" (goal {h['goal']})" if h.get("goal") else ""))
            for h in data.get("headline") or [] if isinstance(h, dict)]
    goal = data.get("goal")
    for key, value in data.items():
        if "ratio" in key and is_pairs(value):
            rows += [(name, f"{key}: {k}", fmt(v) + (f" (goal {goal})" if goal else "")) for k, v in value.items()]
    return rows


def section(path: Path, data: Any) -> list[str]:
    if not isinstance(data, dict):
        return [f"## {path.stem}", "", f"```\n{json.dumps(data, indent=1)[:4000]}\n```", ""]
    out = [f"## {path.stem}: {data.get('benchmark', '')}".rstrip(": "), ""]
    meta = [f"{k} {fmt(data[k])}" for k in ("when", "host") if k in data]
    if meta:
        out += ["_" + " · ".join(meta) + "_", ""]
    for key, value in data.items():
        if key in ("benchmark", "when", "host", "headline"):
            continue
        if (is_table(value) or is_pairs(value)) and out[-1]:
            out.append("")
        if is_table(value):
            out += [f"**{key}**", "", *table(value), ""]
        elif is_pairs(value):
            out += [f"**{key}**", "", "| | value |", "|---|---|", *[f"| {k} | {fmt(v)} |" for k, v in value.items()], ""]
        elif key == "plot" and isinstance(value, str) and value.endswith(".png") and (RESULTS / value).exists():
            out += ["", f"![{path.stem}](results/{value})", ""]
        else:
            out += [f"- **{key}**: {fmt(value)}"]
    return out + [""]


def stale_note(path: Path, data: Any, since: float | None) -> str:
    """'' for a results file written by this run; else why its figures are older than the run."""
    if since is None or path.stat().st_mtime >= since:
        return ""
    when = data.get("when") if isinstance(data, dict) else None
    when = when or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return f"STALE: not re-measured by this run (measured {when})"


def compose(runs: list[dict[str, Any]], since: float | None = None) -> Path:
    files = sorted(p for p in RESULTS.glob("*.json"))
    loaded, stale = {}, {}
    for p in files:
        try:
            loaded[p] = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            loaded[p] = {"benchmark": "unreadable results file", "error": str(exc)}
        stale[p] = stale_note(p, loaded[p], since)
    out = ["# Benchmark results", "",
           "Written by `make bench` (bench/run_all.py) from bench/results/*.json. Every ratio is measured side "
           "by side in one run of its benchmark; the machine is shared, so absolute figures are noisy.", ""]
    if runs:
        out += ["| benchmark script | how it ended | seconds |", "|---|---|---|"]
        out += [f"| {r['script']} | {r['status']} | {r['seconds']:,.0f} |" for r in runs] + [""]
    summary = [(a, b, c + (f" — {stale[p]}" if stale[p] else ""))
               for p, d in loaded.items() if isinstance(d, dict) for a, b, c in summary_rows(p.stem, d)]
    if summary:
        out += ["## Summary: ratios and headline figures", "", "| results | figure | value |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in summary] + [""]
    for p, d in loaded.items():
        lines = section(p, d)
        if stale[p]:
            lines[0] += f" — {stale[p]}"
        out += lines
    out += [f"_composed {datetime.now(timezone.utc).isoformat(timespec='seconds')}_", ""]
    target = BENCH / "RESULTS.md"
    target.write_text("\n".join(out))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark names (bench_NAME.py)")
    parser.add_argument("--compose-only", action="store_true", help="only rebuild RESULTS.md from the JSON files")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs, since = [], None
    if not args.compose_only:
        since = time.time()
        only = set(args.only.split(",")) if args.only else None
        scripts = discover(only)
        if not scripts:
            print("no benchmark scripts found (bench/bench_*.py)")
        runs = [run_one(s) for s in scripts]
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / "runs.json").write_text(json.dumps({"since": since, "runs": runs}, indent=2) + "\n")
    elif (LOGS / "runs.json").exists():
        last = json.loads((LOGS / "runs.json").read_text())
        runs, since = (last.get("runs", []), last.get("since")) if isinstance(last, dict) else (last, None)
    print(f"wrote {compose(runs, since).relative_to(ROOT)}")
    return 1 if any(r["status"] != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
