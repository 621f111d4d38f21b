"""Prometheus config, alert rules and the Grafana dashboard read only metrics that exist: graduate's
own as the code registers them (its registries, imported here), the exporters' (Triton,
kafka-exporter, Prometheus) as METRICS.md lists them; METRICS.md lists what the code registers."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.validate import tool

OBS = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBS / "grafana" / "dashboards" / "graduate.json"

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "absent", "absent_over_time", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "time", "vector", "scalar",
    "humanizePercentage", "inf", "nan",
}
REQUIRED_ALERTS = {"GraduateFallbackRateAbovePrediction", "GraduateConsumerLagGrowing", "GraduateDeadLetterRate",
                   "GraduateTritonNotReady", "GraduateCaptureSpoolGrowing"}


def contract_metrics() -> set[str]:
    names = set()
    for line in (OBS / "METRICS.md").read_text().splitlines():
        m = re.match(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|", line)
        if m:
            names.add(m.group(1))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels, functions and durations left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)  # label lists
    expr = re.sub(r"\$\w+", "", expr)
    tokens = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", t)}


def code_metrics() -> set[str]:
    """Every series name graduate's code exports: the workers' modules register on prometheus_client's
    default registry when imported, the router on a RouterMetrics registry of its own."""
    import importlib

    from prometheus_client import REGISTRY

    from services.router.metrics import RouterMetrics

    for module in ("services.common.streams", "services.shadow.runner", "services.profiler.app",
                   "services.curator.app", "services.judge.app", "services.controller.app"):
        importlib.import_module(module)
    names = set()
    for registry in (REGISTRY, RouterMetrics().registry):
        for family in registry.collect():
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def external_metrics() -> set[str]:
    """What METRICS.md lists from exporters that are not graduate's code."""
    return {m for m in contract_metrics() if not m.startswith("graduate_")}


def known_metrics() -> set[str]:
    return code_metrics() | external_metrics()


def base_name(metric: str, contract: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if metric.endswith(suffix) and metric[: -len(suffix)] in contract:
            return metric[: -len(suffix)]
    return metric


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((OBS / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_metric_name_extraction():
    expr = ('sum by (task) (rate(graduate_router_fallbacks_total{served_by=~"small|x"}[15m])) > on (task) '
            '(1.5 * max by (task) (graduate_router_predicted_fallback_rate)) and up{job="t"} == 0')
    assert metric_names(expr) == {"graduate_router_fallbacks_total", "graduate_router_predicted_fallback_rate", "up"}


def test_the_contract_lists_exactly_what_the_code_registers():
    ours = {m for m in code_metrics() if m.startswith("graduate_")}
    listed = {m for m in contract_metrics() if m.startswith("graduate_")}
    assert listed - ours == set(), "METRICS.md lists names no code registers"
    assert ours - listed == set(), "the code registers names METRICS.md does not list"


def test_the_contract_lists_the_agreed_names():
    contract = contract_metrics()
    assert {"graduate_router_requests_total", "graduate_router_request_latency_seconds",
            "graduate_router_fallbacks_total", "graduate_router_capture_queue_depth", "graduate_router_spool_bytes",
            "graduate_router_spool_records", "graduate_router_task_mode", "graduate_router_predicted_fallback_rate",
            "graduate_router_cost_saved_usd_total", "graduate_processor_processed_total",
            "graduate_processor_failed_total", "graduate_processor_deadletter_total", "graduate_processor_lag",
            "graduate_processor_processing_seconds", "graduate_judge_agreement",
            "nv_inference_request_success"} <= contract


def test_alert_rules_have_the_expected_shape():
    doc = yaml.safe_load((OBS / "alerts.yml").read_text())
    assert set(doc) == {"groups"}
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s"))
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")")
    assert REQUIRED_ALERTS <= {r["alert"] for r in alert_rules()}


def test_alerts_name_only_registered_metrics():
    known = known_metrics()
    for rule in alert_rules():
        unknown = {base_name(m, known) for m in metric_names(rule["expr"])} - known
        assert not unknown, f"{rule['alert']} reads {unknown}, which no code registers (nor METRICS.md's exporters)"


def test_dashboard_names_only_registered_metrics_and_has_the_panels():
    known = known_metrics()
    exprs = dashboard_exprs()
    for expr in exprs:
        unknown = {base_name(m, known) for m in metric_names(expr)} - known
        assert not unknown, f"dashboard query {expr!r} reads {unknown}, which no code registers"
    dash = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dash["panels"]}
    assert {"Mode", "Request rate per path", "p95 latency per path", "Fallback rate: observed vs predicted",
            "Agreement (judge)", "Cost saved per day"} <= titles
    task_var = next(v for v in dash["templating"]["list"] if v["name"] == "task")
    assert task_var["includeAll"] and any(p.get("repeat") == "task" for p in dash["panels"])


def test_an_unregistered_name_is_caught():
    known = known_metrics()
    assert {base_name(m, known) for m in metric_names("rate(graduate_judge_agreemnt[5m])")} - known
    assert "graduate_judge_agreement" in known and "graduate_router_requests_total" in known
    assert base_name("graduate_processor_processing_seconds_bucket", known) == "graduate_processor_processing_seconds"


def test_prometheus_configs_load_the_alerts_and_scrape_every_service():
    compose = yaml.safe_load((OBS / "prometheus.yml").read_text())
    assert compose["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in compose["scrape_configs"]}
    assert jobs["graduate-router"] == ["router:9464"] and jobs["graduate-triton"] == ["triton:8002"]
    assert jobs["graduate-kafka-exporter"] == ["kafka-exporter:9308"]
    for w in ("profiler", "curator", "shadow", "judge", "controller"):
        assert jobs[f"graduate-{w}"] == [f"{w}:6066"]
    # every job GraduateTargetAbsent watches is one Prometheus scrapes
    absent = next(r for r in alert_rules() if r["alert"] == "GraduateTargetAbsent")
    assert set(re.findall(r'absent\(up\{job="([^"]+)"\}\)', absent["expr"])) == set(jobs)
    k8s = yaml.safe_load((OBS / "prometheus-k8s.yml").read_text())
    assert k8s["scrape_configs"][0]["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert [j["job_name"] for j in k8s["scrape_configs"]] == ["graduate-pods", "graduate-kafka-exporter"]


PROMTOOL = tool("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed here (make validators "
                                    "unpacks it from Debian's prometheus package); the YAML checks above still ran")


@needs_promtool
def test_promtool_accepts_rules_and_config():
    # prometheus-k8s.yml is not checked: Debian builds promtool without Kubernetes service discovery
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        out = subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, cwd=OBS, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_alerts_fire_on_synthetic_series():
    out = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], check=False, capture_output=True,
                         text=True, cwd=OBS, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
