"""Sizing arithmetic for deploy/README.md: per-process rates -> replicas, partitions, brokers, GPUs.

Every input is a `Figure` that says whether it was measured (and where) or assumed; the README's
table is `render_markdown()` verbatim (a unit test holds that), and `graduate deploy sizing --set
NAME=VALUE` recomputes it when bench/ measures a rate that is only assumed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from services.common.catalog import CALLS_CAPTURED

DAY_S = 86_400
TIERS = (60_000, 6_000_000, 1_000_000_000)


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    measured: bool
    source: str


FIGURES: dict[str, Figure] = {
    "triton_cpu_rps": Figure(258, "req/s per Triton on 2 CPU cores (int8, dynamic batching, 8 clients)", True,
                             "shared/notes/ml-stack-facts.md, tritonserver 2.51 gRPC, MiniLM-L6 int8"),
    "triton_gpu_rps": Figure(4000, "req/s per GPU (one Triton, int8/fp16 MiniLM-L6, dynamic batching)", False,
                             "assumed: ~15x the 2-core CPU rate; bench/ (issue 5, --device cuda) replaces it"),
    "router_rps": Figure(400, "req/s per router pod (1 vCPU, uvicorn, async frontier calls)", False,
                         "assumed; bench/ router load test (issue 3) replaces it"),
    "curator_rps": Figure(21500, "records/s per curator process (1 vCPU: batch read, Avro decode, admission, tally, "
                          "dataset writing)", True, "bench/results/processors.json (issue 16, 2026-12-05 22:53, "
                          "100 k calls, load 3.7): 21,491 records per CPU second with the dataset writing, 0.26x raw "
                          "read+decode (20.5-25.7 k, 0.25-0.29x, in eight runs that evening; the code before the "
                          "stage cuts 21.9-23.7 k, 0.24-0.26x, run alternately with it)"),
    "profiler_rps": Figure(50400, "records/s per profiler process (1 vCPU: batch read, Avro decode, aggregates)",
                           True, "bench/results/processors.json (2026-12-05 17:15, 100 k calls): 50,363 records per "
                           "CPU second, same run; 0.53x raw read+decode (0.45-0.61x in ten runs that day)"),
    "shadow_rps": Figure(3000, "calls/s per shadow process (faust agent, 1 vCPU: routing, the Triton gRPC call, "
                         "results; the model's own inference is Triton's, sized above)", True,
                         "bench/results/processors.json agents (2026-12-05, 20 k calls): 3,016 calls per CPU second "
                         "of the worker, task in shadow mode on a keyword model in Triton; 0.04x raw read+decode"),
    "judge_rps": Figure(1600, "shadow results/s per judge process (faust agent, 1 vCPU: re-key by task, judge, "
                        "state write)", True, "bench/results/processors.json agents (2026-12-05, 20 k results): "
                        "1,610 per CPU second, same run; 0.02x raw read+decode"),
    "controller_rps": Figure(4000, "calls/s per controller process (faust agent, 1 vCPU: one router outcome and "
                             "one capture per call)", True, "bench/results/processors.json agents (2026-12-05, 20 k "
                             "calls): 4,082 per CPU second, same run; 0.10x raw read+decode"),
    "peak_factor": Figure(3, "peak-to-average request rate", False, "assumed: a daytime peak of a business API"),
    "utilisation": Figure(0.7, "target utilisation at peak (headroom for rebalances, failover)", False,
                          "assumed (ops rule of thumb)"),
    "inferences_per_call": Figure(1, "small-model inferences per call", False,
                                  "design: router in small mode or the shadow worker in shadow mode, not both"),
    "record_bytes": Figure(3072, "bytes written to Kafka per call (CapturedCall ~2 KiB + outcome + result)",
                           False, "assumed from the Avro schemas with ~100-token inputs"),
    "replication": Figure(3, "replicas per partition", False, "the generated KafkaTopics (min.insync 2)"),
    "broker_write_mb_s": Figure(50, "MB/s of replicated writes one broker takes comfortably", False,
                                "assumed (NVMe, 10 GbE, well below saturation)"),
    "captured_bytes": Figure(2048, "bytes per CapturedCall record", False, "assumed (see record_bytes)"),
}


@dataclass(frozen=True)
class Plan:
    calls_per_day: int
    avg_rps: float
    peak_rps: float
    router_pods: int
    triton_cpu_pods: int
    triton_gpus: int
    curator_consumers: int
    profiler_consumers: int
    shadow_consumers: int
    judge_consumers: int
    controller_consumers: int
    captured_partitions: int
    brokers: int
    captured_storage_tb: float


def plan(calls_per_day: int, figures: dict[str, Figure] = FIGURES) -> Plan:
    f = {k: v.value for k, v in figures.items()}
    u = f["utilisation"]
    avg = calls_per_day / DAY_S
    peak = avg * f["peak_factor"]
    inferences = peak * f["inferences_per_call"]
    def consumers(rate: float) -> int:
        return max(1, math.ceil(peak / (rate * u)))

    groups = ("curator_rps", "profiler_rps", "shadow_rps", "judge_rps", "controller_rps")
    slowest = max(consumers(f[g]) for g in groups)
    writes_mb_s = peak * f["record_bytes"] * f["replication"] / 1e6
    retention_days = (CALLS_CAPTURED.retention_ms or 0) / (DAY_S * 1000)
    storage = avg * DAY_S * retention_days * f["captured_bytes"] * f["replication"] / 1e12
    return Plan(
        calls_per_day=calls_per_day, avg_rps=avg, peak_rps=peak,
        router_pods=max(2, math.ceil(peak / (f["router_rps"] * u))),  # two for availability
        triton_cpu_pods=max(1, math.ceil(inferences / (f["triton_cpu_rps"] * u))),
        triton_gpus=max(1, math.ceil(inferences / (f["triton_gpu_rps"] * u))),
        curator_consumers=consumers(f["curator_rps"]), profiler_consumers=consumers(f["profiler_rps"]),
        shadow_consumers=consumers(f["shadow_rps"]), judge_consumers=consumers(f["judge_rps"]),
        controller_consumers=consumers(f["controller_rps"]),
        # the slowest group sets the partitions, rounded up to the catalog's multiple so keys spread
        # evenly; never below the catalog
        captured_partitions=max(CALLS_CAPTURED.partitions,
                                math.ceil(slowest / CALLS_CAPTURED.partitions) * CALLS_CAPTURED.partitions),
        brokers=max(int(f["replication"]), math.ceil(writes_mb_s / f["broker_write_mb_s"])),
        captured_storage_tb=storage,
    )


def with_overrides(overrides: dict[str, float]) -> dict[str, Figure]:
    figures = dict(FIGURES)
    for name, value in overrides.items():
        if name not in figures:
            raise KeyError(f"unknown figure {name!r}; known: {', '.join(sorted(figures))}")
        figures[name] = replace(figures[name], value=value, measured=True, source="given on the command line")
    return figures


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:,.2f}"


def render_markdown(figures: dict[str, Figure] = FIGURES) -> str:
    plans = [plan(t, figures) for t in TIERS]
    head = "| | " + " | ".join(f"{p.calls_per_day:,} calls/day" for p in plans) + " |"
    rows = [
        ("average req/s (calls / 86,400)", [_n(p.avg_rps) for p in plans]),
        ("peak req/s (x peak_factor)", [_n(p.peak_rps) for p in plans]),
        ("router pods (peak / (router_rps x utilisation), min 2)", [str(p.router_pods) for p in plans]),
        ("Triton on CPU, 2-core pods (peak / (triton_cpu_rps x utilisation))",
         [str(p.triton_cpu_pods) for p in plans]),
        ("or Triton GPUs (peak / (triton_gpu_rps x utilisation))", [str(p.triton_gpus) for p in plans]),
        ("curator consumers (peak / (curator_rps x utilisation)), measured rate",
         [str(p.curator_consumers) for p in plans]),
        ("profiler consumers (peak / (profiler_rps x utilisation)), measured rate",
         [str(p.profiler_consumers) for p in plans]),
        ("shadow consumers (peak / (shadow_rps x utilisation)), measured rate",
         [str(p.shadow_consumers) for p in plans]),
        ("judge consumers (peak / (judge_rps x utilisation)), measured rate; one task's results on one",
         [str(p.judge_consumers) for p in plans]),
        ("controller consumers (peak / (controller_rps x utilisation)), measured rate; a task on one consumer",
         [str(p.controller_consumers) for p in plans]),
        (f"partitions of {CALLS_CAPTURED.name} (catalog: {CALLS_CAPTURED.partitions})",
         [str(p.captured_partitions) for p in plans]),
        ("Kafka brokers (peak x record_bytes x replication / broker_write_mb_s, min 3)",
         [str(p.brokers) for p in plans]),
        ("captured-call storage, TB (90 d retention x replication)",
         [f"{p.captured_storage_tb:,.2f}" for p in plans]),
    ]
    lines = [head, "|---|" + "---:|" * len(plans)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    lines += ["", "| figure | value | what | measured? | source |", "|---|---:|---|---|---|"]
    lines += [f"| {k} | {v.value:g} | {v.unit} | {'measured' if v.measured else 'assumed'} | {v.source} |"
              for k, v in figures.items()]
    return "\n".join(lines) + "\n"
