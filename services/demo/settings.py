"""Demo settings (env GRADUATE_DEMO_*): how much traffic, how long to train, what drifts, what things cost.

The defaults fit the whole loop into about a quarter of an hour on two CPU cores; every figure the
report states as an assumption (prices, calls per day, the simulator's accuracy) is one of these.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import REPO_ROOT

# A product launch the model never saw: the bank opens currency exchange in the app, and
# customers start asking about rates and fees. These intents are kept out of the traffic
# before the launch, so the training data cannot contain them.
CURRENCY_EXCHANGE_LAUNCH = (
    "exchange_rate", "exchange_via_app", "exchange_charge", "fiat_currency_support",
    "card_payment_wrong_exchange_rate", "wrong_exchange_rate_for_cash_withdrawal",
)


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_DEMO_", extra="ignore", frozen=True)

    # where
    report_dir: Path = Field(REPO_ROOT / "demo-report", description="the report folder (README.md + PNG)")
    data_dir: Path = Field(REPO_ROOT / "data" / "banking77", description="Banking77 train.csv / test.csv")
    task: str = "banking77-intent"
    freeform_task: str = Field("draft-reply", description="the open-ended task the candidates report should reject")
    namespace: Optional[str] = Field(None, description="topic namespace; default a fresh 'demo<hex>.' per run")
    keep_artifacts: bool = Field(False, description="keep the run's topics, model files and trainer run (default: delete)")

    # traffic (Banking77 is the gold; the simulator answers in its place)
    train_calls: int = Field(6000, ge=100, description="Banking77 train inputs replayed before the model exists")
    freeform_per_1000: float = Field(10.0, ge=0, description="draft-reply calls per 1,000 Banking77 calls: "
                                     "600/day beside 60,000, a volume not worth owning a model for")
    shadow_calls: int = Field(1000, ge=50, description="Banking77 test inputs replayed while the model shadows")
    small_calls: int = Field(1200, ge=50, description="Banking77 test inputs served in small mode before the drift")
    drift_calls: int = Field(1200, ge=50, description="calls after the launch: held-out intents mixed with the rest "
                             "(what the frontier answers here is what the retrain learns the new intents from)")
    drift_share: float = Field(0.6, gt=0, le=1, description="share of post-launch calls that are of the new intents")
    regate_calls: int = Field(800, ge=0, description="Banking77 test inputs no phase sent, replayed after the retrain: "
                              "shadow until the re-gate, then small mode with the new version")
    regate_share: float = Field(0.2, ge=0, le=1, description="share of post-retrain calls about the launch's intents "
                                "(their test inputs, kept out of the drift phase)")
    drift_labels: tuple[str, ...] = Field(CURRENCY_EXCHANGE_LAUNCH,
                                          description="intents held out of training and sent after the launch")
    intents: Optional[int] = Field(None, ge=2, description="only the first N intents before the launch (quick runs); "
                                   "default all")
    concurrency: int = Field(48, ge=1, le=256, description="requests in flight, like a busy backend service")
    small_concurrency: int = Field(8, ge=1, le=256, description="in flight while small mode serves before the drift: "
                                   "the latency figures of the small and fallback paths come from here, below the "
                                   "router's saturation (60,000 calls/day is under 1 request/s)")
    seed: int = 7

    # the simulated review and the training run
    review_share: float = Field(1.0, ge=0, le=1, description="share of the holdout 'reviewed' with Banking77's label "
                                "(the gate is graded on reviewed labels once there are enough)")
    threshold_headroom: float = Field(0.03, ge=0, lt=0.5, description="the threshold must keep requests at the frontier's "
                                      "reviewed holdout accuracy plus this, so the served answers lead the frontier by "
                                      "more than the gate's paired test can mistake for noise")
    epochs: int = Field(4, ge=1)
    learning_rate: float = Field(3e-4, gt=0, description="the fine-tune's: few examples per intent want a brisk rate")
    batch_size: int = Field(16, ge=1, description="small batches: more steps from few examples")
    max_length: int = Field(32, ge=8, description="tokens per input (Banking77's are short)")
    max_train_examples: Optional[int] = Field(None, ge=10)
    retrain_epochs: Optional[int] = Field(None, ge=1, description="the retrain's epochs; default: epochs")

    # the frontier simulator
    sim_accuracy: float = Field(0.92, gt=0, le=1)
    sim_latency_min_ms: float = 400.0
    sim_latency_max_ms: float = 900.0
    sim_seed: int = 0

    # processes and ports (127.0.0.1)
    router_port: int = 8080
    sim_port: int = 8090
    worker_base_port: int = Field(6066, description="faust web ports: this and the next four")
    small_sample_rate: float = Field(0.05, ge=0, le=1, description="small-mode share also sent to the frontier")
    start_timeout_s: float = 120.0
    gate_timeout_s: float = Field(240.0, description="longest wait for a gate decision after its evidence is in")
    train_timeout_s: float = 1500.0

    # what things cost (USD), for the report's cost comparison
    calls_per_day: int = 60_000
    instance_usd_per_hour: float = Field(0.526, description="one serving instance for the small model")
    serving_instances: int = 1
    training_runs_per_month: float = 4.0
    training_run_usd: float = 2.0
    ops_usd_per_month: float = 200.0

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: Optional[str]) -> Optional[str]:
        if v and not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return v

    @model_validator(mode="after")
    def _latency(self) -> "DemoSettings":
        if self.sim_latency_min_ms > self.sim_latency_max_ms:
            raise ValueError("sim_latency_min_ms exceeds sim_latency_max_ms")
        return self

    @property
    def freeform_calls(self) -> int:
        return round(self.train_calls * self.freeform_per_1000 / 1000)

    @property
    def worker_ports(self) -> dict[str, int]:
        return {name: self.worker_base_port + i
                for i, name in enumerate(("profiler", "curator", "shadow", "judge", "controller"))}
