"""Settings of the frontier simulator (prefix GRADUATE_SIM_); the CLI's flags override them.

Default accuracy 0.92: a plausible frontier-model level on Banking77, a little above the
all-MiniLM-L6-v2 that was fine-tuned here on the clean labels (87.4 % test accuracy, DESIGN.md),
so graduating the small model is a real question and not a foregone one. It is an assumption
of the simulator, not a measurement of any real model; set GRADUATE_SIM_ACCURACY to study others.

Extraction (Restaurant-8k, task restaurant8k-booking): per-field error rates, measured where the
field is present in the gold, default people 4 %, time 5 %, date 5 %, first_name 6 %, last_name
6 %: numbers and times are the easy slots for an LLM, dates vary more in how much of the phrase
is the value ("on Sunday, December 30"), and names are where first/last get swapped or merged.
Assumptions too, not measurements; GRADUATE_SIM_FIELD_ERROR_RATES='{"date": 0.1}' changes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import REPO_ROOT

Fault = Literal["500", "429", "timeout", "garbage"]
FAULTS: tuple[Fault, ...] = ("500", "429", "timeout", "garbage")
DEFAULT_FIELD_ERROR_RATES = {"people": 0.04, "time": 0.05, "date": 0.05, "first_name": 0.06, "last_name": 0.06}


class SimSettings(BaseSettings):
    """How the simulated frontier model answers: accuracy, latency, malformed answers, faults."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_SIM_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    accuracy: float = Field(0.92, gt=0.0, le=1.0, description="share of answers with the gold label")
    latency_min_ms: float = Field(400.0, ge=0.0)
    latency_max_ms: float = Field(900.0, ge=0.0)
    latency_per_input: bool = Field(False, description="the latency a function of (task, normalised input, seed), "
                                    "as the answers are, instead of drawn in arrival order: the same traffic waits "
                                    "the same in every run and arm of a benchmark, whatever the arrival order")
    seed: int = Field(0, description="changes which inputs are answered wrongly, and how")
    malformed_rate: float = Field(0.003, ge=0.0, le=1.0, description="answers a strict parser refuses")
    confusable_labels: int = Field(4, ge=1, description="how many similar labels an error may land on")
    data_dir: Path = REPO_ROOT / "data" / "banking77"
    data_task: str = Field("banking77-intent", description="the classification task the data set labels")
    more_data: dict[str, Path] = Field(default_factory=dict, description="more classification tasks to answer: "
                                       "task name -> folder with train.csv/test.csv (text,category)")
    model_name: str = "graduate-frontier-sim"
    extraction_task: str = Field("restaurant8k-booking", description="the extraction task the span data labels")
    extraction_data_dir: Path = REPO_ROOT / "data" / "restaurant8k"
    field_error_rates: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_FIELD_ERROR_RATES),
        description="per field: share of wrong values where the field is present (JSON object)")
    extraction_malformed_rate: float = Field(0.005, ge=0.0, le=1.0, description="JSON answers a strict parser refuses")
    fault_rate_500: float = Field(0.0, ge=0.0, le=1.0)
    fault_rate_429: float = Field(0.0, ge=0.0, le=1.0)
    fault_rate_timeout: float = Field(0.0, ge=0.0, le=1.0)
    fault_rate_garbage: float = Field(0.0, ge=0.0, le=1.0)
    fault_timeout_s: float = Field(30.0, ge=0.0, description="how long a 'timeout' fault hangs")

    @field_validator("latency_max_ms")
    @classmethod
    def _range(cls, v: float, info: ValidationInfo) -> float:
        low = info.data.get("latency_min_ms")
        if low is not None and low > v:
            raise ValueError(f"must be at least GRADUATE_SIM_LATENCY_MIN_MS ({low:g}), got {v:g}")
        return v

    @field_validator("data_dir")
    @classmethod
    def _has_data(cls, v: Path) -> Path:
        if not any((v / name).exists() for name in ("train.csv", "test.csv")):
            raise ValueError(f"{v} holds neither train.csv nor test.csv")
        return v

    @field_validator("field_error_rates")
    @classmethod
    def _field_rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {name: rate for name, rate in v.items() if not 0.0 <= rate < 1.0}
        if bad:
            raise ValueError(f"every field error rate must be in [0, 1), got {bad}")
        return v

    @field_validator("fault_rate_garbage")  # the last rate: the others are validated by now
    @classmethod
    def _rates_sum(cls, v: float, info: ValidationInfo) -> float:
        total = v + sum(info.data.get(f"fault_rate_{k}") or 0.0 for k in ("500", "429", "timeout"))
        if total > 1.0:
            raise ValueError(f"GRADUATE_SIM_FAULT_RATE_* add up to {total:g}, more than 1")
        return v

    def fault_rates(self) -> dict[Fault, float]:
        return {"500": self.fault_rate_500, "429": self.fault_rate_429,
                "timeout": self.fault_rate_timeout, "garbage": self.fault_rate_garbage}
