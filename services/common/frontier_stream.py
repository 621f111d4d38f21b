"""A streamed chat completion from the frontier: the `data:` payloads of its server-sent events,
passed on as they arrive, and the chat.completion the chunks add up to (what is captured once the
stream has ended). A failure mid-stream is never retried: the answer was under way."""
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Protocol

import httpx

from services.common.frontier_errors import (
    FrontierAnswer,
    FrontierBadResponse,
    FrontierDisconnected,
    FrontierError,
    FrontierUpstreamError,
    parse_completion,
    read_error,
)

DONE = "[DONE]"


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each event (multi-line data joined by newlines); comments and other fields are skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment, e.g. a keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat.completion that a stream's chat.completion.chunk objects add up to (the first choice:
    the router asks for one). Usage is the last one any chunk carried (None when none did)."""
    content: list[str] = []
    head: dict[str, Any] = {}
    role, finish, usage, refusal = "assistant", None, None, []
    for chunk in chunks:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key):
                head[key] = chunk[key]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            role = delta.get("role") or role
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            finish = choice.get("finish_reason") or finish
    message = {"role": role, "content": "".join(content) if content or not refusal else None,
               "refusal": "".join(refusal) if refusal else None}
    return {"id": head.get("id", ""), "object": "chat.completion", "created": head.get("created", 0),
            "model": head.get("model", ""), "system_fingerprint": head.get("system_fingerprint"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage}


class Breaker(Protocol):
    def record_success(self) -> None: ...
    def record_failure(self) -> None: ...
    def release(self) -> None: ...


class FrontierStream:
    """An open streamed answer. `async for data, chunk in stream` gives each event's data as the
    provider sent it (bytes, to pass on untouched) with its parsed chunk; after the last one,
    `answer` is the whole answer assembled from the chunks (usage as the provider sent it).
    A failure mid-stream raises FrontierError (never retried: the answer was under way)."""

    def __init__(self, response: httpx.Response, breaker: Breaker, start: float, attempts: int,
                 timeout_s: float) -> None:
        self._resp = response
        self._breaker = breaker
        self._start = start
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._settled = False
        self.answer: FrontierAnswer | None = None

    async def __aenter__(self) -> "FrontierStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; a stream given up before its end (the caller left) neither succeeded nor
        failed the provider."""
        await self._resp.aclose()
        self._settle(None)

    async def __aiter__(self) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        chunks: list[dict[str, Any]] = []
        first_ms: float | None = None
        done = False
        try:
            async for data in sse_data(self._resp.aiter_lines()):
                if data.strip() == DONE:
                    done = True
                    break
                chunk = _chunk(data)
                if first_ms is None:
                    first_ms = (time.perf_counter() - self._start) * 1000
                chunks.append(chunk)
                yield data.encode(), chunk
        except httpx.HTTPError as exc:
            error = read_error(exc, self._timeout_s, self._attempts, mid_stream=True)
            self._settle(error)
            raise error from None
        except FrontierError as exc:
            self._settle(exc)
            raise
        if not done and not any(c.get("finish_reason") for ch in chunks for c in ch.get("choices") or []):
            error = FrontierDisconnected("the frontier's stream ended before its answer did (no finish_reason, "
                                         "no [DONE])", attempts=self._attempts)
            self._settle(error)
            raise error
        self.answer = _streamed_answer(chunks, self._start, first_ms, self._attempts)
        self._settle(self.answer)

    def _settle(self, outcome: FrontierAnswer | FrontierError | None) -> None:
        if self._settled:
            return
        self._settled = True
        if isinstance(outcome, FrontierAnswer):
            self._breaker.record_success()
        elif isinstance(outcome, FrontierError):
            self._breaker.record_failure()
        else:
            self._breaker.release()


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise FrontierBadResponse(f"frontier streamed an event that is not JSON: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise FrontierBadResponse(f"frontier streamed an event that is not a chunk: {data[:200]!r}")
    if chunk.get("error"):
        err = chunk["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise FrontierUpstreamError(f"frontier failed mid-stream: {message}")
    return chunk


def _streamed_answer(chunks: list[dict[str, Any]], start: float, first_ms: float | None,
                     attempts: int) -> FrontierAnswer:
    body = assemble(chunks)
    text, model, prompt_tokens, completion_tokens = parse_completion(body)
    return FrontierAnswer(body=body, content=text, model=model, latency_ms=(time.perf_counter() - start) * 1000,
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, attempts=attempts,
                          first_chunk_ms=first_ms)
