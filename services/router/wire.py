"""Answers in the OpenAI wire format: any served answer as a chat.completion, or as the
server-sent events of a streamed one."""
from __future__ import annotations

import json
import time
from typing import Any

from services.router.logic import Served


def completion_body(served: Served) -> dict[str, Any]:
    """A normal chat.completion for any served answer; graduate's facts ride along under `graduate`."""
    extra = {"call_id": served.call_id, "served_by": served.served_by, "confidence": served.confidence,
             "model_version": served.model_version, "fallback_reason": served.fallback_reason}
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
