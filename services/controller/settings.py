"""Controller settings (env GRADUATE_CONTROLLER_*): the gate's margin and sample sizes, the watch's window.

Every figure a decision depends on lives here, so the evidence of a decision can name it.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_CONTROLLER_", extra="ignore", frozen=True)

    # offline gate
    margin: float = Field(0.01, ge=0.0, lt=0.5, description="non-inferiority margin on the accuracy difference")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="one-sided level of the non-inferiority test")
    offline_table: Literal["served", "small"] = Field(
        "served", description="served: test small-with-fallback at the threshold when the trainer reports "
        "metrics_json.paired_at_threshold; small: always the small model everywhere")
    min_holdout: int = Field(300, ge=1, description="gold-labelled holdout examples the offline gate needs")
    serving_tolerance: float = Field(0.0, ge=0.0, lt=1.0,
                                     description="a candidate may trail the serving model's holdout accuracy "
                                                 "by this much")
    # shadow gate
    min_shadow_comparisons: int = Field(200, ge=1, description="live comparisons before the shadow gate decides")
    min_shadow_kept: int = Field(100, ge=1,
                                 description="comparisons at or above the threshold the agreement check needs")
    min_shadow_reviewed: int = Field(30, ge=1, description="reviewed comparisons before the reviewed check applies")
    # watch after cutover
    window_size: int = Field(500, ge=10, description="small-mode outcomes in the sliding window")
    min_window: int = Field(200, ge=10, description="outcomes in the window before a breach can be called")
    window_max_age_s: float = Field(3600.0, gt=0, description="outcomes older than this (event time) leave the window")
    breach_ratio: float = Field(1.5, gt=1.0, description="observed / predicted fallback rate that is a breach")
    breach_min_increase: float = Field(0.05, ge=0.0, lt=1.0,
                                       description="a breach also needs the rate this far above the prediction")
    watch_alpha: float = Field(0.01, gt=0.0, lt=0.5, description="significance a breach needs (binomial test)")
    sampled_window: int = Field(200, ge=10, description="sampled small-mode answers compared with the frontier")
    min_sampled: int = Field(50, ge=5, description="sampled comparisons before sampled accuracy can breach")
    accuracy_drop: float = Field(0.05, gt=0.0, lt=1.0,
                                 description="sampled agreement this far below the gate's level is a breach")
    confidence_drop: float = Field(0.10, gt=0.0, lt=1.0,
                                   description="mean confidence this far below the episode's first window is a breach")
    low_confidence_reason: str = Field("low_confidence",
                                       description="RouterOutcome.fallback_reason of a threshold fallback")
    # starting graduations
    look_interval_s: float = Field(30.0, gt=0, description="how often the controller reads the captured and reviewed "
                                   "topics to see whether a task on the frontier is ready to graduate")
    retrain_every_h: Optional[float] = Field(None, gt=0, description="ask for a retrain (kind schedule) of a task "
                                             "in small mode whose model is older than this; default: never")
    # the retrain after a drift waits for data captured since the demotion (services/curator/readiness.py)
    drift_min_train_per_label: Optional[int] = Field(
        None, ge=1, description="training examples each label the traffic moved to needs before the retrain; "
        "default: the median label's count before the drift, 10 to 50")
    drift_min_reviewed: Optional[int] = Field(
        None, ge=0, description="reviewed holdout items captured since the drift before the retrain; default: "
        "min_holdout / labels for each of those labels, at least min_shadow_reviewed")
    # CLI
    status_outcomes_per_partition: int = Field(2000, ge=1,
                                               description="router outcomes `graduate status` reads per partition")
    decided_by: str = "controller"

    @model_validator(mode="after")
    def _windows(self) -> "ControllerSettings":
        if self.min_window > self.window_size:
            raise ValueError(f"min_window {self.min_window} exceeds window_size {self.window_size}")
        if self.min_sampled > self.sampled_window:
            raise ValueError(f"min_sampled {self.min_sampled} exceeds sampled_window {self.sampled_window}")
        return self
