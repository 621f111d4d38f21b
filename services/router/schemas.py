"""Request bodies and how they are read: size limit (413), UTF-8, JSON, nesting depth, Unicode
text and finite numbers (400), fields and sampling parameters as the OpenAI API types them (422)."""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

from fastapi import Request
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.router.errors import ApiError

M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 64  # an OpenAI chat body with tool schemas nests well under this
MAX_INT_DIGITS = 20
GRADUATE_METADATA = ("task", "tenant")  # metadata keys the router reads and does not pass upstream


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


def _number(lo: float, hi: float, what: str) -> Any:
    return Field(None, ge=lo, le=hi, strict=True, description=what)


class ChatRequest(BaseModel):
    """The OpenAI chat completions body: what the router reads, and the sampling parameters typed
    and bounded as the OpenAI API types them (422 otherwise); the rest is passed upstream untouched."""
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = Field(None, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    metadata: Optional[dict[str, Any]] = Field(None, description="`task` and `tenant` are read by the router")
    stream: bool = Field(False, strict=True)
    stream_options: Optional[dict[str, Any]] = None
    temperature: Optional[float] = _number(0, 2, "sampling temperature, 0 to 2")
    top_p: Optional[float] = _number(0, 1, "nucleus sampling mass, 0 to 1")
    n: Optional[int] = Field(None, ge=1, le=1, strict=True,
                             description="choices to return: the router serves one (its own, the small model's or "
                                         "the frontier's), so 1 or left out")
    max_tokens: Optional[int] = Field(None, ge=1, strict=True)
    max_completion_tokens: Optional[int] = Field(None, ge=1, strict=True)
    presence_penalty: Optional[float] = _number(-2, 2, "-2 to 2")
    frequency_penalty: Optional[float] = _number(-2, 2, "-2 to 2")
    seed: Optional[int] = Field(None, strict=True)
    stop: Optional[Union[str, list[str]]] = Field(None, description="up to 4 stop sequences")
    logit_bias: Optional[dict[str, Annotated[int, Field(ge=-100, le=100, strict=True)]]] = None
    logprobs: Optional[bool] = Field(None, strict=True)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20, strict=True)
    user: Optional[str] = Field(None, max_length=256)
    parallel_tool_calls: Optional[bool] = Field(None, strict=True)

    @field_validator("n", mode="before")
    @classmethod
    def _one_choice(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            raise ValueError(f"n={v}: the router serves one choice per request; send n=1 or leave n out")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

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
    chunks, size, more = [], 0, True
    while more:  # Request.stream() without its async generator (the hot endpoints read every body here)
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(size, max_bytes)
        chunks.append(chunk)
        more = message.get("more_body", False)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                                f"position {exc.start})") from None
    if not text.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                            f"column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # a number refused by the hooks below
        raise ApiError(400, "invalid_number", f"request body: {exc}") from None
    check_values(data)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (use a finite number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a double (use a finite number)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer {text[:20]}… has more than {MAX_INT_DIGITS} digits")
    value = int(text)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise ValueError(f"integer {text} is outside the 64-bit range")
    return value


def check_values(data: Any) -> None:
    """400 for what JSON can say and the router must not pass on: nesting deeper than MAX_DEPTH and
    strings that are not Unicode text (lone surrogates such as \\ud800, which JSON escapes allow)."""
    stack: list[tuple[Any, str, int]] = [(data, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, "invalid_json", f"request body is nested deeper than {MAX_DEPTH} levels (at {where})")
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, f"{where} key")
                stack.append((v, f"{where}.{k}", depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, "invalid_unicode", f"{where[:200]}: invalid Unicode, a lone surrogate "
                                               f"U+{ord(text[exc.start]):04X} at position {exc.start}",
                       param=where[:200]) from None


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
