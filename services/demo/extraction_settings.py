"""Settings of the extraction demo (env GRADUATE_DEMO_*, as services/demo/settings.py): the
Banking77 demo's settings with the defaults of the restaurant8k-booking story.

The defaults fit the whole loop (capture, snapshot, training, gates, shadow, small mode) into
about a quarter of an hour on two CPU cores: a subset of Restaurant-8k is replayed (5,000 of the
7,906 distinct train_0.json utterances are captured; shadow and small-mode traffic comes from the
train_0.json utterances that were not captured, or from test.json with GRADUATE_DEMO_LIVE_SOURCE=test),
and the report says so. The Banking77-only settings (drift, intents, draft-reply) are not used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.common.settings import REPO_ROOT
from services.demo.settings import DemoSettings


class ExtractionDemoSettings(DemoSettings):
    report_dir: Path = Field(REPO_ROOT / "demo-report" / "extraction", description="the report folder")
    data_dir: Path = Field(REPO_ROOT / "data" / "restaurant8k", description="Restaurant-8k train_0.json / test.json")
    task: str = "restaurant8k-booking"

    train_calls: int = Field(5000, ge=100, description="distinct Restaurant-8k train_0.json utterances replayed "
                             "(captured, frontier mode) before any model exists")
    live_source: Literal["train", "test"] = Field("train", description="where the shadow and small-mode traffic "
                                                  "comes from: 'train' = the train_0.json utterances that were not "
                                                  "captured (the holdout's distribution, which the gates' expectations "
                                                  "come from), 'test' = test.json")
    shadow_calls: int = Field(1500, ge=50, description="at most this many never-captured utterances replayed while the "
                              "model shadows: the replay stops at the cutover, which the controller decides on its "
                              "running statistics (usually after a few hundred)")
    shadow_settle_s: float = Field(90.0, gt=0, description="after the last shadow call, how long to wait for the "
                                   "controller's cutover before the demo reports that the shadow gate did not pass")
    small_calls: int = Field(600, ge=50, description="never-captured utterances served in small mode")

    review_share: float = Field(1.0, ge=0, le=1, description="share of the holdout 'reviewed' with Restaurant-8k's "
                                "gold spans (the gate is graded on reviewed labels once there are enough)")
    threshold_headroom: float = Field(0.03, ge=0, lt=0.5, description="the threshold must keep requests at the "
                                      "frontier's reviewed exact match plus this, so that the served answers lead "
                                      "the frontier by more than the gate's paired test can mistake for noise")
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(1.5e-4, gt=0, description="the token-classification fine-tune's")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(48, ge=8, description="tokens per utterance (Restaurant-8k's are short)")
