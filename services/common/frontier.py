"""The frontier side of the wire: an OpenAI-compatible chat-completions client.

Any provider that speaks `POST {base_url}/chat/completions` works (OpenAI, Anthropic's compatible
endpoint, vLLM, a gateway, graduate's simulator). One pooled `httpx.AsyncClient`; retries with
exponential backoff and full jitter on 429 (honouring Retry-After), 5xx and connection errors,
within a total time budget; a circuit breaker that stops calling a provider that keeps failing.
Failures raise `FrontierError` subclasses that carry the HTTP status the router answers with.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

PLACEHOLDER_KEYS = frozenset({"changeme", "change-me", "xxx", "your-key", "sk-..."})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
PASSED_THROUGH_STATUS = frozenset({400, 404, 413, 422})  # the caller's request was wrong, say so


class FrontierSettings(BaseSettings):
    """Where the frontier API is and how patiently to call it (GRADUATE_FRONTIER_*)."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_FRONTIER_", extra="ignore", frozen=True)

    base_url: str = "http://127.0.0.1:8090/v1"
    api_key: Optional[SecretStr] = None
    model: str = Field("gpt-4o-mini", description="model named upstream when a request names none")
    provider: str = "openai-compatible"
    timeout_s: float = Field(30.0, gt=0, description="per attempt, for the whole response")
    connect_timeout_s: float = Field(3.0, gt=0)
    max_retries: int = Field(2, ge=0)
    retry_budget_s: float = Field(60.0, gt=0, description="wall-clock limit for one call, retries included")
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    breaker_failures: int = Field(5, ge=1, description="consecutive failed calls that open the breaker")
    breaker_cooldown_s: float = Field(10.0, ge=0, description="open time before one probe call is let through")
    max_connections: int = Field(200, ge=1)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _no_placeholder(cls, v: Optional[SecretStr]) -> Optional[SecretStr]:
        if v is not None and v.get_secret_value().strip().lower() in PLACEHOLDER_KEYS:
            raise ValueError("is a placeholder; set a real key or leave it unset")
        return v


class FrontierError(Exception):
    """The frontier call failed; `status_code` is what the router answers, `code` a stable name."""

    status_code = 502
    code = "frontier_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.attempts = attempts


class FrontierUpstreamError(FrontierError):
    """The provider answered with an error status (after retries where they apply)."""

    code = "frontier_upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message, upstream_status=upstream_status, attempts=attempts)
        if upstream_status in PASSED_THROUGH_STATUS:
            self.status_code = upstream_status
            self.code = "frontier_rejected_request"


class FrontierBadResponse(FrontierError):
    """The provider answered 200 with something that is not a chat completion."""

    code = "frontier_bad_response"


class FrontierUnreachable(FrontierError):
    """No connection to the provider could be made."""

    code = "frontier_unreachable"


class FrontierTimeout(FrontierError):
    status_code = 504
    code = "frontier_timeout"


class FrontierCircuitOpen(FrontierError):
    status_code = 503
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


class CircuitBreaker:
    """Closed → open after `failures` consecutive failed calls → half-open after `cooldown_s` (one probe)."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self.consecutive += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self.consecutive >= self.failures:
            if self.opened_at is None or was_probe:
                log.warning("frontier circuit breaker open after %d consecutive failures", self.consecutive)
            self.opened_at = self.clock()

    def release(self) -> None:
        """A call that neither succeeded nor failed the provider (e.g. the caller's bad request)."""
        self._probe_in_flight = False


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


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


class FrontierClient:
    """`await client.chat(payload)` → FrontierAnswer, or a FrontierError subclass."""

    def __init__(self, settings: FrontierSettings, *, transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None, sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s, clock)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        limits = httpx.Limits(max_connections=settings.max_connections,
                              max_keepalive_connections=settings.max_connections)
        self._http = httpx.AsyncClient(base_url=settings.base_url, headers=headers, limits=limits,
                                       timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierAnswer:
        """One chat completion (non-streaming), retried within the budget; the payload's model defaults."""
        if not self.breaker.allow():
            raise FrontierCircuitOpen(
                f"frontier circuit breaker is open after {self.breaker.consecutive} consecutive failures; "
                f"next probe within {self.settings.breaker_cooldown_s:g} s")
        body = {**payload, "stream": False}
        body.setdefault("model", self.settings.model)
        content = json.dumps(body).encode()
        try:
            answer = await self._call_with_retries(content, headers or {})
        except FrontierUpstreamError as exc:
            if exc.upstream_status in PASSED_THROUGH_STATUS:
                self.breaker.release()  # the provider is fine; the request was not
            else:
                self.breaker.record_failure()
            raise
        except FrontierError:
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return answer

    async def _call_with_retries(self, content: bytes, headers: dict[str, str]) -> FrontierAnswer:
        s = self.settings
        deadline = self._clock() + s.retry_budget_s
        start = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - self._clock()
            try:
                return await self._attempt(content, headers, attempt, start, remaining)
            except _Retryable as r:
                error, wait = r.error, r.wait
            if attempt > s.max_retries:
                raise error
            wait = backoff_s(attempt - 1, s.backoff_base_s, s.backoff_max_s, self._rng) if wait is None else wait
            if self._clock() + wait >= deadline:
                raise error  # waiting would spend the whole budget: fail now, clearly
            log.info("frontier attempt %d failed (%s); retrying in %.2f s", attempt, error, wait)
            await self._sleep(wait)

    async def _attempt(self, content: bytes, headers: dict[str, str], attempt: int, start: float,
                       remaining: float) -> FrontierAnswer:
        s = self.settings
        left = max(remaining, 0.001)
        timeout = httpx.Timeout(min(s.timeout_s, left), connect=min(s.connect_timeout_s, left))
        try:
            resp = await self._http.post("/chat/completions", content=content, headers=headers, timeout=timeout)
        except httpx.ConnectTimeout as exc:
            raise _Retryable(FrontierUnreachable(f"frontier connect timed out: {exc}", attempts=attempt)) from None
        except httpx.TimeoutException as exc:
            raise FrontierTimeout(f"frontier did not answer within {timeout.read:g} s ({type(exc).__name__})",
                                  attempts=attempt) from None
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise _Retryable(FrontierUnreachable(f"cannot reach the frontier at {s.base_url}: {exc}",
                                                 attempts=attempt)) from None
        except httpx.HTTPError as exc:
            raise FrontierUnreachable(f"frontier transport error: {type(exc).__name__}: {exc}",
                                      attempts=attempt) from None
        if resp.status_code in RETRYABLE_STATUS:
            error = FrontierUpstreamError(f"frontier answered {resp.status_code}: {_snippet(resp)}",
                                          upstream_status=resp.status_code, attempts=attempt)
            raise _Retryable(error, retry_after_s(resp.headers.get("retry-after")))
        if resp.status_code != 200:
            raise FrontierUpstreamError(f"frontier answered {resp.status_code}: {_snippet(resp)}",
                                        upstream_status=resp.status_code, attempts=attempt)
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FrontierBadResponse(f"frontier answered 200 with a body that is not JSON: {_snippet(resp)}",
                                      attempts=attempt) from None
        text, model, prompt_tokens, completion_tokens = parse_completion(body)
        return FrontierAnswer(body=body, content=text, model=model,
                              latency_ms=(time.perf_counter() - start) * 1000,
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, attempts=attempt)


class _Retryable(Exception):
    def __init__(self, error: FrontierError, wait: float | None = None) -> None:
        self.error = error
        self.wait = wait


def _snippet(resp: httpx.Response, limit: int = 200) -> str:
    text = resp.text.strip().replace("\n", " ")
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
