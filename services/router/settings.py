"""Settings of the router (GRADUATE_ROUTER_*), with the frontier (GRADUATE_FRONTIER_*), capture
(GRADUATE_CAPTURE_*) and common (GRADUATE_*: Kafka, topic namespace, Triton, tasks file) parts nested."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.capture.client import CaptureSettings
from services.common.frontier import FrontierSettings
from services.common.settings import CommonSettings, load_settings


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADUATE_ROUTER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_keys_file: Optional[Path] = Field(None, description="default: <GRADUATE_VAR_DIR>/keys.json")
    keys_check_s: float = Field(2.0, ge=0, description="how often the keys file is checked for changes: a new or "
                                "removed key takes effect within this many seconds")
    auth_disabled: bool = Field(False, description="serve without API keys (local experiments only; logged loudly)")
    max_body_bytes: Optional[int] = Field(None, ge=1024, description="larger request bodies are refused with "
                                          "413; default (and most): derived from GRADUATE_KAFKA_MAX_MESSAGE_BYTES")
    small_sample_rate: float = Field(0.05, ge=0.0, le=1.0,
                                     description="share of small-mode answers also asked of the frontier, "
                                                 "off the hot path")
    sample_max_in_flight: int = Field(32, ge=1, description="concurrent sampled frontier calls; more are skipped")
    triton_timeout_s: float = Field(1.0, gt=0, description="slower small answers fall back (triton_unavailable)")
    loop: Literal["asyncio", "uvloop"] = Field("uvloop", description="the event loop the router serves on")
    switch_interval_s: float = Field(0.0005, gt=0, description="sys.setswitchinterval in the served router: how "
                                     "long the request loop may wait for the GIL while another thread (the capture "
                                     "sender, grpc's poller) holds it; Python's default is 0.005")
    gc_freeze: bool = Field(True, description="move everything alive once the router has started to the "
                            "permanent generation (gc.freeze), so full collections do not walk it")
    forward_headers: tuple[str, ...] = Field(("traceparent", "tracestate"),
                                             description="request headers passed on to the frontier")
    docs: Literal["off", "key", "open"] = Field(
        "key", description="the OpenAPI document: off; /openapi.json behind an API key (no /docs, /redoc); or "
                           "open with /docs and /redoc (local experiments only)")
    metrics_host: str = Field("127.0.0.1", description="where /metrics listens (its own port, no key): the pod "
                                                       "network address (0.0.0.0) for a scraper in the cluster")
    metrics_port: Optional[int] = Field(9464, ge=0, le=65535, description="/metrics port; 0 any free port")
    capture_enabled: bool = True
    capture_name: str = Field("router", description="names the spool folder <var_dir>/spool/<name>; one per replica")
    routing_retry_s: float = Field(2.0, gt=0, description="between attempts to reach the routing topic")
    common: CommonSettings = Field(default_factory=CommonSettings)
    frontier: FrontierSettings = Field(default_factory=FrontierSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)

    @field_validator("forward_headers")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in v if h.strip())

    @field_validator("capture_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return v

    @model_validator(mode="after")
    def _sizes_agree(self) -> "RouterSettings":
        self.common.kafka.limits.check(self.max_body_bytes)  # a body the capture could not send is refused at start
        return self

    @cached_property
    def body_limit(self) -> int:
        """Request bodies over this many bytes get 413 (below what a captured record may carry); read on
        every request, so worked out once."""
        return self.max_body_bytes or self.common.kafka.limits.body_bytes

    @property
    def keys_file(self) -> Path:
        return self.api_keys_file or self.common.var_dir / "keys.json"


def load_router_settings(**overrides) -> RouterSettings:
    """Settings from the environment; a bad value exits with the name of its own variable
    (GRADUATE_FRONTIER_BASE_URL, not GRADUATE_ROUTER_…)."""
    parts = {"common": load_settings(CommonSettings), "frontier": load_settings(FrontierSettings),
             "capture": load_settings(CaptureSettings)}
    return load_settings(RouterSettings, **{**parts, **overrides})
