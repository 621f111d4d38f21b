"""Shadow settings (env GRADUATE_SHADOW_*)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shadow.logic import ShadowPolicy


class ShadowSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_SHADOW_", extra="ignore", frozen=True)

    batch_size: int = Field(64, ge=1, description="captured calls taken per micro-batch")
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a micro-batch")
    max_request: int = Field(32, ge=1, description="texts per Triton request (at most the model's max_batch_size)")
    max_in_flight: int = Field(4, ge=1, description="Triton requests in flight at once")
    triton_timeout_s: float = Field(5.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0, description="first wait after Triton was unavailable")
    backoff_max_s: float = Field(15.0, gt=0)
    small_mode_sources: frozenset[str] = Field(frozenset({"sampled"}),
                                               description="capture sources shadowed in small mode (JSON list)")
    small_mode_sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of those that is shadowed")

    def policy(self) -> ShadowPolicy:
        return ShadowPolicy(small_mode_sources=self.small_mode_sources,
                            small_mode_sample_rate=self.small_mode_sample_rate)
