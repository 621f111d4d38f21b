"""Profiler settings (env GRADUATE_PROFILER_*): the traits' thresholds and the cost assumptions.
The task specs (which decide how narrowness is judged) come from CommonSettings.tasks_file."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.profiler.logic import Costs, Thresholds


class ProfilerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_PROFILER_", extra="ignore", frozen=True)

    # volume
    window_days: int = Field(7, ge=1, description="calls/day are measured over the newest N days")
    min_span_hours: float = Field(1.0, gt=0, description="shortest span a calls/day rate is extrapolated from")
    min_calls_per_day: float = 1000.0
    # narrow, stable output
    max_distinct_outputs: int = 1000
    min_repeat_share: float = Field(0.8, description="share of answers whose output occurs more than once")
    max_entropy_bits: float = 10.0
    min_stability: float = 0.9
    min_repeated_inputs: int = 20
    max_parse_failure_rate: float = 0.1
    # narrow output of an extraction task (a JSON object with the spec's fields): judged by structure
    min_conform_rate: float = Field(0.95, ge=0, le=1, description="extraction: share of answers that must be a JSON "
                                    "object with only the spec's fields")
    max_known_fields: int = Field(30, ge=1, description="extraction: most fields a spec may have and still count as narrow")
    # latency or cost sensitive (either is enough)
    min_p95_latency_ms: float = 500.0
    min_cost_per_day_usd: float = 20.0
    # cheap training data
    min_usable_examples: int = 1000
    # owning a model
    instance_price_per_hour: float = Field(0.526, description="serving instance, USD/hour")
    serving_instances: int = 1
    hours_per_month: float = 730.0
    training_runs_per_month: float = 4.0
    training_run_usd: float = 2.0
    ops_allowance_per_month_usd: float = 200.0
    expected_fallback_rate: float = Field(0.2, ge=0, le=1, description="used until router outcomes measure it")
    sampled_share: float = Field(0.02, ge=0, le=1, description="small-mode traffic still sent to the frontier")
    small_latency_ms: float = 20.0
    days_per_month: float = 30.0
    min_outcomes_to_measure: int = 200
    # worker
    worker_batch_size: int = Field(2000, ge=1, description="records per read (getmany) of the worker")

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f: getattr(self, f) for f in Thresholds.__dataclass_fields__})

    def costs(self) -> Costs:
        return Costs(**{f: getattr(self, f) for f in Costs.__dataclass_fields__})
