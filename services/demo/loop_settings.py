"""Settings of the demo runner (env GRADUATE_DEMO_*): which scenario, how much traffic, how long to wait.

Nothing here tunes the product: the runner starts it as `graduate up` would, with the
environment it was given (a run that wants the controller's sample sizes scaled down sets
GRADUATE_CONTROLLER_* itself, as an operator would).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import REPO_ROOT


class LoopSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_DEMO_", extra="ignore", frozen=True)

    scenario: str = Field("banking77", description="banking77, hwu64 or restaurant8k (or the task's name)")
    report_dir: Path = Field(REPO_ROOT / "demo-report", description="facts.json and README.md of the run")
    labels: Optional[int] = Field(None, ge=2, description="only the first N labels before any launch (quick runs)")
    capture_calls: int = Field(4000, ge=50, description="calls before any model: what the first model learns from")
    shadow_calls: int = Field(1500, ge=10, description="most calls sent while a model shadows, in chunks")
    small_calls: int = Field(800, ge=10, description="calls served in small mode before the launch")
    drift_calls: int = Field(2500, ge=10, description="most calls after the launch (banking77), until the demotion")
    drift_share: float = Field(0.6, gt=0, le=1, description="share of post-launch calls about the launch")
    chunk: int = Field(100, ge=1, description="calls between two looks at the topics")
    concurrency: int = Field(16, ge=1, le=256, description="requests in flight")
    seed: int = 7
    ports_from: int = Field(18600, ge=1024, description="router, review page, simulator, the workers' web ports, then (+9) the router's /metrics")
    start_timeout_s: float = Field(300.0, gt=0)
    ready_wait_s: float = Field(90.0, ge=0, description="after the reviews, how long to wait for the controller to "
                                "say `ready` before approving anyway (what the profiler said is reported)")
    train_timeout_s: float = Field(1800.0, gt=0, description="longest wait for a model after a training request")
    decision_timeout_s: float = Field(300.0, gt=0, description="longest wait for a gate's verdict")
    settle_s: float = Field(60.0, ge=0, description="wait after a phase's last call for the gates to see it")
