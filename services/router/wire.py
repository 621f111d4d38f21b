"""Answers in the OpenAI wire format: any served answer as a chat.completion, or as the
server-sent events of a streamed one; a frontier stream relayed chunk by chunk as it arrives."""
from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any, AsyncIterator

from services.common.frontier import FrontierError
from services.router.logic import Relay, Served

DONE_EVENT = b"data: [DONE]\n\n"


def graduate_facts(served: Served) -> dict[str, Any]:
    """What graduate says about an answer, under `graduate` (the body, or a stream's last chunk)."""
    return {"call_id": served.call_id, "served_by": served.served_by, "confidence": served.confidence,
            "model_version": served.model_version, "fallback_reason": served.fallback_reason}


def completion_body(served: Served) -> dict[str, Any]:
    """A normal chat.completion for any served answer; graduate's facts ride along under `graduate`."""
    extra = graduate_facts(served)
    if served.completion is not None:
        return {**served.completion, "graduate": extra}
    return {
        "id": f"chatcmpl-{served.call_id}", "object": "chat.completion", "created": int(time.time()),
        "model": served.model or "graduate-small", "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": served.content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "graduate": extra,
    }


def sse_events(completion: dict[str, Any], include_usage: bool = False) -> list[bytes]:
    """A finished chat.completion as the server-sent events of a streamed one (stream=true)."""
    head = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message.get("content") or ""},
                              "logprobs": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                              "finish_reason": choice.get("finish_reason") or "stop"}]},
    ]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": completion.get("usage")})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


async def relay_events(relay: Relay, call_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The frontier's stream passed on event by event, each as the provider sent it, except the last
    chunk, which gains the `graduate` trailer once the answer has ended (and been captured). The chunk
    that carries finish_reason, and the usage chunk, are held until the next event shows whether
    they are the last; the usage chunk the router asked for is dropped unless the caller asked too.
    A failure mid-stream ends with an error event (the openai SDK raises APIError on it), no [DONE]."""
    held: dict[str, Any] | None = None
    held_data = b""
    try:
        async with aclosing(relay.events()) as events:  # a caller who leaves closes the upstream stream too
            async for data, chunk in events:
                choices = chunk.get("choices") or []
                finishing = any(c.get("finish_reason") for c in choices)
                usage_only = bool(chunk.get("usage")) and not finishing and not any(
                    (c.get("delta") or {}).get("content") for c in choices)
                if usage_only and not include_usage:
                    continue
                if held is not None:
                    yield event(held_data)
                    held = None
                if usage_only or finishing or not choices:
                    held, held_data = chunk, data
                    continue
                yield event(data)
    except FrontierError as exc:
        if held is not None:
            yield event(held_data)
        yield event(json.dumps({"error": {"message": str(exc), "type": exc.error_type, "param": None,
                                          "code": exc.code}, "call_id": call_id}).encode())
        return
    facts = graduate_facts(relay.served) if relay.served is not None else {
        "call_id": call_id, "served_by": relay.served_by, "confidence": None, "model_version": None,
        "fallback_reason": None}
    last = held if held is not None else {"object": "chat.completion.chunk", "choices": []}
    yield event(json.dumps({**last, "graduate": facts}).encode())
    yield DONE_EVENT


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
