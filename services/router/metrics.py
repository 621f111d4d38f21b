"""The router's Prometheus metrics. The names are a contract: dashboards and alerts in deploy/ use them."""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from services.capture.client import CaptureStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
MODES = ("frontier", "shadow", "small")
NO_TASK = "_none"  # requests without a task (plain proxy)
UNKNOWN_TASK = "_unknown"  # refused before a known task was named (keeps label cardinality bounded)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("graduate_router_requests_total", "Requests by task, who served them, and HTTP status",
                                ["task", "served_by", "status"], registry=r)
        self.latency = Histogram("graduate_router_request_latency_seconds", "Request latency in the router by path",
                                 ["task", "path"], buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("graduate_router_fallbacks_total",
                                 "Small-mode requests the frontier answered, by reason", ["task", "reason"], registry=r)
        self.capture_queue_depth = Gauge("graduate_router_capture_queue_depth",
                                         "Captured records queued or unacknowledged by Kafka", registry=r)
        self.spool_bytes = Gauge("graduate_router_spool_bytes", "Bytes waiting in the capture spool", registry=r)
        self.spool_records = Gauge("graduate_router_spool_records", "Records waiting in the capture spool", registry=r)
        self.task_mode = Gauge("graduate_router_task_mode", "1 for the task's current mode, 0 for the others",
                               ["task", "mode"], registry=r)
        self.predicted_fallback_rate = Gauge("graduate_router_predicted_fallback_rate",
                                             "Fallback rate that calibration predicted for the serving model",
                                             ["task"], registry=r)
        self.cost_saved = Counter("graduate_router_cost_saved_usd_total",
                                  "Estimated frontier cost avoided by small-model answers", ["task"], registry=r)
        self.parse_failures = Counter("graduate_router_frontier_parse_failures_total",
                                      "Frontier answers that are not a valid task output (captured, never a label)",
                                      ["task"], registry=r)
        self.frontier_errors = Counter("graduate_router_frontier_errors_total",
                                       "Frontier calls that failed, by error code (frontier_auth_error: the "
                                       "provider refused the router's own key)", ["task", "code"], registry=r)
        self.samples = Counter("graduate_router_samples_total",
                               "Small-mode requests sampled to the frontier, by result", ["task", "result"], registry=r)
        self._capture_stats: Callable[[], CaptureStats] | None = None
        self._children: dict[tuple, Any] = {}
        r.register(_CaptureDropped(self))

    def child(self, metric, *labels: str):
        """`metric.labels(*labels)`, kept: the request path asks for the same few children every time
        (prometheus_client takes a lock and builds the key on each `labels` call). Only for metrics
        whose children are never removed (requests, latency, cost saved)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def bind_capture(self, stats: Callable[[], CaptureStats]) -> None:
        """Read the capture client's queue and spool at scrape time (nothing on the request path)."""
        self._capture_stats = stats
        self.capture_queue_depth.set_function(lambda: stats().queue_depth)
        self.spool_bytes.set_function(lambda: stats().spool_bytes)
        self.spool_records.set_function(lambda: stats().spool_records)

    def set_mode(self, task: str, mode: str, predicted_fallback_rate: float | None) -> None:
        for m in MODES:
            self.task_mode.labels(task, m).set(1.0 if m == mode else 0.0)
        if predicted_fallback_rate is None:
            try:
                self.predicted_fallback_rate.remove(task)
            except KeyError:
                pass
        else:
            self.predicted_fallback_rate.labels(task).set(predicted_fallback_rate)


class _CaptureDropped:
    """graduate_router_capture_dropped_total{reason}: records capture could not keep (spool full, rejected)."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return [CounterMetricFamily("graduate_router_capture_dropped", "Captured records dropped", labels=["reason"])]

    def collect(self):
        family = CounterMetricFamily("graduate_router_capture_dropped", "Captured records dropped", labels=["reason"])
        if self.metrics._capture_stats is not None:
            for reason, n in sorted(self.metrics._capture_stats().dropped.items()):
                family.add_metric([reason], n)
        yield family

