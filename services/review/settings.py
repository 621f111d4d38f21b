"""Settings of the review page (GRADUATE_REVIEW_*), with the common (GRADUATE_*) and the curator's
(GRADUATE_CURATOR_*: holdout fraction, queue length, low-confidence bound) parts nested, so the
page's queue is the curator's queue."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import CommonSettings
from services.controller.settings import ControllerSettings
from services.curator.settings import CuratorSettings


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_REVIEW_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8070, ge=1, le=65535)
    api_keys_file: Optional[Path] = Field(None, description="the router's keys file; default "
                                                            "<GRADUATE_VAR_DIR>/keys.json")
    session_ttl_s: float = Field(8 * 3600, gt=0, description="a signed-in reviewer enters the key again after this")
    cookie_secure: bool = Field(False, description="send the session cookie over HTTPS only (set behind TLS)")
    recent_disagreements: int = Field(500, ge=1, description="disagreements kept per task for the task page")
    history_kept: int = Field(500, ge=1, description="routing history records kept per task")
    stats_points: int = Field(2000, ge=10, description="shadow statistics points kept per task and model version")
    outcome_bucket_s: int = Field(60, ge=1, description="width of the fallback-rate buckets, in seconds")
    queue_refresh_s: float = Field(2.0, ge=0, description="a busy task's queue is recomputed at most this often "
                                   "(a call reviewed meanwhile leaves it at once)")
    retry_s: float = Field(2.0, gt=0, description="between attempts to reach Kafka or a missing topic")
    note_max_chars: int = Field(2000, ge=1)
    common: CommonSettings = Field(default_factory=CommonSettings)
    curator: CuratorSettings = Field(default_factory=CuratorSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)  # the gate's minimum reviewed holdout

    @property
    def keys_file(self) -> Path:
        return self.api_keys_file or self.common.var_dir / "keys.json"
