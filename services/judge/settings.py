"""Judge settings (env GRADUATE_JUDGE_*)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import catalog


class JudgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_JUDGE_", extra="ignore", frozen=True)

    partitions: int = Field(catalog.SHADOW_RESULTS.partitions, ge=1,
                            description="partitions of the judge's by-task topic and table (its parallelism)")
    stats_interval_s: float = Field(1.0, gt=0, description="changed statistics are published at most this often")
    stats_refresh_s: float = Field(30.0, gt=0, description="every statistic is republished this often")
