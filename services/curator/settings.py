"""Curator settings (env GRADUATE_CURATOR_*)."""
from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.curator.logic import DEFAULT_HOLDOUT_FRACTION


class CuratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_CURATOR_", extra="ignore", frozen=True)

    holdout_fraction: float = Field(DEFAULT_HOLDOUT_FRACTION, description="share of distinct inputs held out")
    review_limit: int = Field(50, ge=1, description="items in the review queue")
    review_low_confidence: float = Field(0.6, ge=0.0, le=1.0, description="shadow confidence below this is reviewed early")
    batch_size: int = Field(2000, ge=1, description="records per read (getmany) of the worker")
    stats_interval_s: float = Field(10.0, gt=0)

    @field_validator("holdout_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v
