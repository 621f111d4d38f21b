"""Request bodies and how they are read: size limit (413), UTF-8 (400), JSON (400), fields (422)."""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.router.errors import ApiError

M = TypeVar("M", bound=BaseModel)
GRADUATE_METADATA = ("task", "tenant")  # metadata keys the router reads and does not pass upstream


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The OpenAI chat completions body: what the router reads; the rest is passed upstream untouched."""
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    metadata: Optional[dict[str, Any]] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None

    def upstream_payload(self, default_model: str) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, exclude={"stream", "stream_options"})
        body["model"] = body.get("model") or default_model
        meta = {k: v for k, v in (self.metadata or {}).items() if k not in GRADUATE_METADATA}
        if meta:
            body["metadata"] = meta
        else:
            body.pop("metadata", None)
        return body


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="the model input, e.g. the customer's message")
    tenant: Optional[str] = Field(None, max_length=128)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty")
        return v


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing oversized (413), non-UTF-8 and malformed (400) bodies with a clear message."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_large(int(length), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(size, max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                                f"position {exc.start})") from None
    if not text.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                            f"column {exc.colno}") from None


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "request_too_large", f"request body of {size} bytes is over the limit of {limit} bytes")


def validate(model: type[M], data: Any) -> M:
    """`model` from decoded JSON, or 422 naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"request body must be a JSON object, got {type(data).__name__}",
                       param="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
        message = "; ".join(f"{where}: {msg}" for where, msg in problems)
        raise ApiError(422, "invalid_request", message, param=problems[0][0]) from None
