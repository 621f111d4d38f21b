"""The frontier side of the wire: an OpenAI-compatible chat-completions client.

Any provider that speaks `POST {base_url}/chat/completions` works (OpenAI, Anthropic's compatible
endpoint, vLLM, a gateway, graduate's simulator). One pooled `httpx.AsyncClient`, plain and streamed
answers (`chat`, `stream`), and a circuit breaker that stops calling a provider that keeps failing.

Retries only where the request surely did not reach the provider (connection refused or not made)
or where the provider said when to come back (429/503 with Retry-After), all within one wall-clock
budget that the provider's own time counts against; a request whose connection dropped after it
was sent is never sent again (it may have been billed). Failures raise the `FrontierError`
subclasses of frontier_errors.py (imported from here too); streams are frontier_stream.py's.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from typing import Any, Callable, Optional

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.frontier_errors import (  # noqa: F401 (the names callers import from here)
    DEFAULT_RETRY_AFTER_S,
    PASSED_THROUGH_STATUS,
    FrontierAnswer,
    FrontierAuthError,
    FrontierBadResponse,
    FrontierCircuitOpen,
    FrontierDisconnected,
    FrontierError,
    FrontierTimeout,
    FrontierUnreachable,
    FrontierUpstreamError,
    parse_completion,
    read_error,
)
from services.common.frontier_stream import FrontierStream

log = logging.getLogger(__name__)

PLACEHOLDER_KEYS = frozenset({"changeme", "change-me", "xxx", "your-key", "sk-..."})
SAID_TO_RETRY_STATUS = frozenset({429, 503})  # retried only when the provider also sends Retry-After
AUTH_STATUS = frozenset({401, 403})  # the provider refused the router's own key: the router's problem
# a 400 about the router's key, not the request (no_db_connection: the LiteLLM proxy with no key store
# answers a key it does not know so)
KEY_PROBLEM = re.compile(r"api[ _-]?key|invalid_api_key|authenticat|unauthori[sz]ed|credential|no_db_connection",
                         re.I)


class FrontierSettings(BaseSettings):
    """Where the frontier API is and how patiently to call it (GRADUATE_FRONTIER_*)."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_FRONTIER_", extra="ignore", frozen=True)

    base_url: str = "http://127.0.0.1:8090/v1"
    api_key: Optional[SecretStr] = None
    model: str = Field("gpt-4o-mini", description="model named upstream when a request names none")
    provider: str = "openai-compatible"
    timeout_s: float = Field(30.0, gt=0, description="per attempt: the longest wait for the answer or the next chunk")
    connect_timeout_s: float = Field(3.0, gt=0)
    max_retries: int = Field(2, ge=0)
    retry_budget_s: float = Field(60.0, gt=0, description="wall-clock limit for one call, retries included")
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    breaker_failures: int = Field(5, ge=1, description="consecutive failed calls that open the breaker")
    breaker_cooldown_s: float = Field(10.0, ge=0, description="open time before one probe call is let through")
    max_connections: int = Field(200, ge=1)
    stream_usage: bool = Field(True, description="ask for token usage in streamed answers "
                                                 "(stream_options.include_usage), so their capture has it")

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

    def retry_in_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))


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


RESET_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def reset_s(value: str | None) -> float | None:
    """Seconds in an x-ratelimit-reset-* header ("1s", "6m0s", "20ms", or plain seconds); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = RESET_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def said_retry_after_s(headers: httpx.Headers) -> float | None:
    """When the provider said to come back: retry-after-ms, else Retry-After (what the openai SDK reads)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return retry_after_s(headers.get("retry-after"))


def derived_retry_after_s(headers: httpx.Headers) -> float | None:
    """For a 429 that says no Retry-After: the longest of the provider's x-ratelimit-reset-* hints."""
    hints = [reset_s(headers.get(h)) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")]
    hints = [h for h in hints if h is not None]
    return max(hints) if hints else None


def retry_after_header(seconds: float) -> str:
    """Retry-After as delta-seconds (a whole number, rounded up, at least 1)."""
    return str(max(1, math.ceil(seconds)))


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


class FrontierClient:
    """`await client.chat(payload)` → FrontierAnswer; `await client.stream(payload)` → an open
    FrontierStream; or a FrontierError subclass."""

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
        """One chat completion (non-streaming); the payload's model defaults."""
        start = time.perf_counter()
        resp, attempts = await self._open({**payload, "stream": False}, headers or {})
        try:
            try:
                await resp.aread()
            except httpx.HTTPError as exc:
                raise read_error(exc, self.settings.timeout_s, attempts) from None
            finally:
                await resp.aclose()
            try:
                body = resp.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FrontierBadResponse(f"frontier answered 200 with a body that is not JSON: {_snippet(resp)}",
                                          attempts=attempts) from None
            text, model, prompt_tokens, completion_tokens = parse_completion(body)
        except FrontierError:
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return FrontierAnswer(body=body, content=text, model=model, latency_ms=(time.perf_counter() - start) * 1000,
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, attempts=attempts)

    async def stream(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierStream:
        """A streamed chat completion, open once the provider answered 200 with an event stream (errors
        before that are raised here, so the caller can still answer with a status); iterate it for the
        chunks as they arrive, and close it (`async with` does)."""
        start = time.perf_counter()
        body = {**payload, "stream": True}
        if self.settings.stream_usage:
            body["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        resp, attempts = await self._open(body, headers or {})
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            await resp.aread()
            await resp.aclose()
            self.breaker.record_failure()
            raise FrontierBadResponse(f"frontier answered a stream request with {resp.headers.get('content-type')!r}"
                                      f", not text/event-stream: {_snippet(resp)}", attempts=attempts)
        return FrontierStream(resp, self.breaker, start, attempts, self.settings.timeout_s)

    async def _open(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[httpx.Response, int]:
        """The provider's 200 response (its body not read yet), after the retries that are safe; the
        breaker is told of every failure here (the caller tells it how the body went)."""
        if not self.breaker.allow():
            wait = self.breaker.retry_in_s()
            raise FrontierCircuitOpen(
                f"frontier circuit breaker is open after {self.breaker.consecutive} consecutive failures; "
                f"next probe within {wait:.1f} s", retry_after=wait)
        body.setdefault("model", self.settings.model)
        try:
            return await self._send_with_retries(json.dumps(body).encode(), headers)
        except FrontierError as exc:
            if exc.counts_against_provider:
                self.breaker.record_failure()
            else:
                self.breaker.release()  # the provider is fine; the request or the caller's quota was not
            raise
        except BaseException:
            self.breaker.release()
            raise

    async def _send_with_retries(self, content: bytes, headers: dict[str, str]) -> tuple[httpx.Response, int]:
        s = self.settings
        deadline = self._clock() + s.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(content, headers, attempt, deadline - self._clock()), attempt
            except _Retryable as r:
                error, wait = r.error, r.wait
            if attempt > s.max_retries:
                raise error
            wait = backoff_s(attempt - 1, s.backoff_base_s, s.backoff_max_s, self._rng) if wait is None else wait
            if self._clock() + wait >= deadline:
                raise error  # waiting would spend the whole budget: fail now, clearly
            log.info("frontier attempt %d failed (%s); retrying in %.2f s", attempt, error, wait)
            await self._sleep(wait)

    async def _attempt(self, content: bytes, headers: dict[str, str], attempt: int,
                       remaining: float) -> httpx.Response:
        s = self.settings
        left = max(remaining, 0.001)
        timeout = httpx.Timeout(min(s.timeout_s, left), connect=min(s.connect_timeout_s, left))
        request = self._http.build_request("POST", "/chat/completions", content=content, headers=headers,
                                           timeout=timeout)
        try:
            resp = await self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # the request was surely not sent
            raise _Retryable(FrontierUnreachable(f"cannot reach the frontier at {s.base_url}: "
                                                 f"{type(exc).__name__}: {exc}", attempts=attempt)) from None
        except httpx.HTTPError as exc:
            raise read_error(exc, timeout.read, attempt) from None
        if resp.status_code == 200:
            return resp
        try:
            await resp.aread()
        except httpx.HTTPError as exc:
            raise read_error(exc, timeout.read, attempt) from None
        finally:
            await resp.aclose()
        raise self._status_error(resp, attempt)

    def _status_error(self, resp: httpx.Response, attempt: int) -> FrontierError | "_Retryable":
        status, said = resp.status_code, said_retry_after_s(resp.headers)
        if status in AUTH_STATUS or (status == 400 and KEY_PROBLEM.search(resp.text or "")):
            return FrontierAuthError(
                f"the frontier at {self.settings.base_url} refused the router's own credentials ({status}): "
                f"check GRADUATE_FRONTIER_API_KEY and the provider account: {_snippet(resp)}",
                upstream_status=status, attempts=attempt)
        error = FrontierUpstreamError(f"frontier answered {status}: {_snippet(resp)}", upstream_status=status,
                                      attempts=attempt,
                                      retry_after=said if said is not None else (
                                          derived_retry_after_s(resp.headers) if status == 429 else None))
        if status in SAID_TO_RETRY_STATUS and said is not None:
            return _Retryable(error, said)
        return error


class _Retryable(Exception):
    def __init__(self, error: FrontierError, wait: float | None = None) -> None:
        self.error = error
        self.wait = wait


def _snippet(resp: httpx.Response, limit: int = 200) -> str:
    try:
        text = resp.text.strip().replace("\n", " ")
    except httpx.ResponseNotRead:
        return "(body not read)"
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
