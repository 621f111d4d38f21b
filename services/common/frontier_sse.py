"""Reading a streamed chat completion: the `data:` payloads of server-sent events, and the
chat.completion the chunks add up to (what is captured once the stream has ended)."""
from __future__ import annotations

from typing import Any, AsyncIterator

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
