"""Pydantic models that mirror the Avro schemas in `schemas/` (the .avsc files are the contract).

Every model names its Avro record in `avro_name`; the codec checks the pair on every encode,
and `tests/unit/test_contracts.py` checks that the fields match the schema file.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["frontier", "shadow", "small"]
ServedBy = Literal["small", "frontier", "fallback"]
CaptureSource = Literal["frontier", "fallback", "sampled"]
ReviewVerdict = Literal["label", "not_in_label_set", "skip"]
RetrainKind = Literal["first", "drift", "schedule", "manual"]


def utcnow() -> datetime:
    """Now, in UTC, at millisecond precision (what Avro's timestamp-millis keeps)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def version_key(version: str) -> tuple:
    """Model versions in order: numbers by value (the trainer's), anything else after them by text."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def new_id() -> str:
    return uuid.uuid4().hex


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    avro_name: ClassVar[str]


class CapturedCall(Contract):
    avro_name: ClassVar[str] = "graduate.v1.CapturedCall"
    call_id: str
    task: str
    tenant: str = "default"
    ts: datetime = Field(default_factory=utcnow)
    input: str
    output_raw: str
    output: Optional[str] = None
    parse_ok: bool = True
    provider: str = "openai-compatible"
    model: str = ""
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    source: CaptureSource = "frontier"
    redacted: bool = False
    trace: dict[str, str] = Field(default_factory=dict)


class ReviewedLabel(Contract):
    avro_name: ClassVar[str] = "graduate.v1.ReviewedLabel"
    call_id: str
    task: str
    verdict: ReviewVerdict = "label"
    label: Optional[str] = None
    reviewer: str
    ts: datetime = Field(default_factory=utcnow)
    note: Optional[str] = None
    normalised_hash: Optional[str] = None


class ShadowResult(Contract):
    avro_name: ClassVar[str] = "graduate.v1.ShadowResult"
    call_id: str
    task: str
    model_version: str
    output: str
    confidence: float
    latency_ms: float
    ts: datetime = Field(default_factory=utcnow)
    input: str = ""
    frontier_output: Optional[str] = None
    source: str = "frontier"
    field_confidence: Optional[dict[str, float]] = None  # extraction: per field (None: classification)


class Disagreement(Contract):
    avro_name: ClassVar[str] = "graduate.v1.Disagreement"
    call_id: str
    task: str
    model_version: str
    input: str
    frontier_output: Optional[str] = None
    small_output: str
    confidence: float
    ts: datetime = Field(default_factory=utcnow)
    reviewed_label: Optional[str] = None
    differing_fields: list[str] = Field(default_factory=list)  # extraction: the fields that differ


class PairedCounts(Contract):
    avro_name: ClassVar[str] = "graduate.v1.PairedCounts"
    both_correct: int = 0
    small_only: int = 0
    frontier_only: int = 0
    neither: int = 0

    @property
    def n(self) -> int:
        return self.both_correct + self.small_only + self.frontier_only + self.neither


class ModelRegistered(Contract):
    avro_name: ClassVar[str] = "graduate.v1.ModelRegistered"
    task: str
    version: str
    base_model: str
    snapshot_id: str
    ts: datetime = Field(default_factory=utcnow)
    holdout_size: int
    gold_reviewed: int
    gold_frontier: int
    small_accuracy: float
    frontier_accuracy: float
    agreement: float
    macro_f1: float = 0.0
    paired: PairedCounts
    threshold: Optional[float] = None
    coverage: float = 0.0
    kept_accuracy: float = 0.0
    predicted_fallback_rate: float = 1.0
    ece_before: float = 0.0
    ece_after: float = 0.0
    temperature: float = 1.0
    labels: list[str] = Field(default_factory=list)
    metrics_json: str = "{}"
    artifact_uri: str
    model_card_uri: Optional[str] = None
    triton_model: str
    retrain_request_id: Optional[str] = None  # the RetrainRequest this version answers (trainer worker)


class RoutingDecision(Contract):
    avro_name: ClassVar[str] = "graduate.v1.RoutingDecision"
    task: str
    mode: Mode
    model_version: Optional[str] = None
    threshold: Optional[float] = None
    reason: str
    evidence: str = "{}"
    decided_by: str
    ts: datetime = Field(default_factory=utcnow)
    decision_id: str = Field(default_factory=new_id)
    predicted_fallback_rate: Optional[float] = None
    triton_model: Optional[str] = None


class RouterOutcome(Contract):
    avro_name: ClassVar[str] = "graduate.v1.RouterOutcome"
    call_id: str
    task: str
    mode: Mode
    served_by: ServedBy
    ts: datetime = Field(default_factory=utcnow)
    model_version: Optional[str] = None
    confidence: Optional[float] = None
    threshold: Optional[float] = None
    output: Optional[str] = None
    fallback_reason: Optional[str] = None
    latency_ms: float
    small_latency_ms: Optional[float] = None
    frontier_latency_ms: Optional[float] = None
    sampled: bool = False
    status_code: int = 200


class DeadLetter(Contract):
    avro_name: ClassVar[str] = "graduate.v1.DeadLetter"
    source_topic: str
    partition: int
    offset: int
    processor: str
    reason: str
    error_type: str
    ts: datetime = Field(default_factory=utcnow)
    key: Optional[bytes] = None
    payload: bytes
    payload_truncated: bool = False


class RetrainRequest(Contract):
    avro_name: ClassVar[str] = "graduate.v1.RetrainRequest"
    request_id: str = Field(default_factory=new_id)
    task: str
    reason: str
    evidence: str = "{}"
    requested_by: str
    ts: datetime = Field(default_factory=utcnow)
    serving_version: Optional[str] = None
    kind: RetrainKind = "drift"


class ShadowStats(Contract):
    avro_name: ClassVar[str] = "graduate.v1.ShadowStats"
    task: str
    model_version: str
    ts: datetime = Field(default_factory=utcnow)
    compared: int
    agreed: int
    kept: int = 0
    kept_agreed: int = 0
    reviewed: int = 0
    small_correct_reviewed: int = 0
    frontier_correct_reviewed: int = 0
    paired: PairedCounts = Field(default_factory=PairedCounts)
    threshold: Optional[float] = None
    confusion_json: str = "{}"


class DatasetRecord(Contract):
    avro_name: ClassVar[str] = "graduate.v1.DatasetRecord"
    task: str
    normalised_hash: str
    shard: int
    split: Literal["train", "holdout"]
    call_id: str
    input: str
    label: Optional[str] = None
    kept_ts: datetime
    first_seen: datetime
    last_seen: datetime
    calls: int
    usable: int
    answers: list[str] = Field(default_factory=list)
    answers_overflow: bool = False
    recent_call_ids: list[str] = Field(default_factory=list)
    last_offset: int


class DatasetForgotten(Contract):
    avro_name: ClassVar[str] = "graduate.v1.DatasetForgotten"
    task: str
    normalised_hash: str
    requested_by: str
    ts: datetime = Field(default_factory=utcnow)
    reason: Optional[str] = None


ALL_CONTRACTS: tuple[type[Contract], ...] = (
    CapturedCall, ReviewedLabel, ShadowResult, Disagreement, ModelRegistered,
    RoutingDecision, RouterOutcome, DeadLetter, RetrainRequest, ShadowStats, DatasetRecord, DatasetForgotten,
)
