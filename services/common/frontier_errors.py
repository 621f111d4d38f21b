"""What a frontier call comes to: an answer, or a `FrontierError` that carries the status and the
OpenAI error type the router answers with, as the provider would have (an upstream 429 stays a 429,
a 5xx stays that 5xx), except the router's own misconfiguration (the provider refusing its key),
a 502 that names the frontier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

PASSED_THROUGH_STATUS = frozenset({400, 404, 408, 409, 413, 422, 429})  # the caller's to see, as the provider said
DEFAULT_RETRY_AFTER_S = 1.0  # what a 429 without any hint tells the caller


class FrontierError(Exception):
    """The frontier call failed. `status_code`, `error_type` (the OpenAI error `type`) and `code` are what
    the router answers with; `retry_after` (seconds) becomes a Retry-After header where it is set."""

    status_code = 502
    error_type = "api_error"
    code = "frontier_error"
    counts_against_provider = True  # the circuit breaker counts it

    def __init__(self, message: str, *, upstream_status: int | None = None, attempts: int = 1,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.attempts = attempts
        self.retry_after = retry_after


class FrontierUpstreamError(FrontierError):
    """The provider answered with an error status; the router answers as the provider did: a 4xx about
    the request or a 429 as that status, a 5xx as that 5xx (`server_error`), anything else as a 502."""

    code = "frontier_upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, attempts: int = 1,
                 retry_after: float | None = None) -> None:
        super().__init__(message, upstream_status=upstream_status, attempts=attempts, retry_after=retry_after)
        status = upstream_status or 502
        if status == 429:
            self.status_code, self.error_type, self.code = 429, "rate_limit_error", "rate_limit_exceeded"
            self.counts_against_provider = False  # the provider is fine; this caller is over its quota
            self.retry_after = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_S
        elif status in PASSED_THROUGH_STATUS:
            self.status_code, self.error_type, self.code = status, "invalid_request_error", "frontier_rejected_request"
            self.counts_against_provider = False
        elif 500 <= status <= 599:
            self.status_code, self.error_type = status, "server_error"


class FrontierAuthError(FrontierError):
    """The provider refused the router's own credentials (401/403, or a 400 about its key): a
    misconfiguration of the router, never the caller's fault. A 502 that says so; the breaker counts it."""

    code = "frontier_auth_error"


class FrontierBadResponse(FrontierError):
    """The provider answered 200 with something that is not a chat completion."""

    code = "frontier_bad_response"


class FrontierUnreachable(FrontierError):
    """No connection to the provider could be made."""

    code = "frontier_unreachable"


class FrontierDisconnected(FrontierError):
    """The connection dropped after the request was sent (or mid-stream): never retried."""

    code = "frontier_disconnected"


class FrontierTimeout(FrontierError):
    status_code = 504
    error_type = "timeout_error"
    code = "frontier_timeout"


class FrontierCircuitOpen(FrontierError):
    status_code = 503
    error_type = "server_error"
    code = "frontier_circuit_open"


@dataclass(frozen=True)
class FrontierAnswer:
    body: dict[str, Any]
    content: str
    model: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    first_chunk_ms: float | None = None  # streamed answers: when the first chunk arrived


def parse_completion(body: Any) -> tuple[str, str, int, int]:
    """(content, model, prompt_tokens, completion_tokens) of a chat.completion; FrontierBadResponse if not one."""
    try:
        message = body["choices"][0]["message"]
        content = message.get("content")
        if content is None and message.get("refusal"):
            content = message["refusal"]
        if not isinstance(content, str):
            raise TypeError("message.content is not text")
        usage = body.get("usage") or {}
        return (content, str(body.get("model") or ""), int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise FrontierBadResponse(f"frontier answered 200 with no chat completion: {exc}") from None


def read_error(exc: httpx.HTTPError, read_timeout: float | None, attempt: int,
                mid_stream: bool = False) -> FrontierError:
    """An error after the request was sent: never retried (the provider may have run it)."""
    where = "mid-stream" if mid_stream else "after the request was sent"
    if isinstance(exc, httpx.TimeoutException):
        return FrontierTimeout(f"frontier did not answer within {read_timeout:g} s {where} ({type(exc).__name__})",
                               attempts=attempt)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return FrontierDisconnected(f"the frontier dropped the connection {where}; not retried (it may have run "
                                    f"the request): {type(exc).__name__}: {exc}", attempts=attempt)
    return FrontierUnreachable(f"frontier transport error {where}: {type(exc).__name__}: {exc}", attempts=attempt)
