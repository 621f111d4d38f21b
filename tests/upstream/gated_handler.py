"""A LiteLLM custom provider for the router's streaming tests: a streamed answer whose first chunk is
sent at once and whose rest waits until the test opens a gate (a file named by the last word of the
user's message, in $GRADUATE_TEST_GATE_DIR) or, with no gate named, `pause_s` later. So a test can
see the first chunk reach the caller while the upstream has provably not finished (events, not
clocks), and a bench can measure the time to the first chunk of a slow answer."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from litellm import CustomLLM

ANSWER = ("card_", "arrival")
PROMPT_TOKENS, COMPLETION_TOKENS = 17, 2
GATE_WAIT_S = 30.0


def chunk(text: str, finished: bool = False) -> dict:
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
             "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS} if finished else None
    return {"text": text, "tool_use": None, "is_finished": finished, "finish_reason": "stop" if finished else "",
            "usage": usage, "index": 0}


async def wait_for(messages: list, pause_s: float) -> None:
    """The gate, or the pause; a gate never opened fails the stream, so an answer buffered until
    the end could never pass for one passed through."""
    words = str(messages[-1].get("content") or "").split()
    if not words or not words[-1].startswith("gate-"):
        await asyncio.sleep(pause_s)
        return
    gate = Path(os.environ.get("GRADUATE_TEST_GATE_DIR", "/nonexistent")) / words[-1]
    for _ in range(int(GATE_WAIT_S / 0.01)):
        if gate.exists():
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the gate {gate} was not opened within {GATE_WAIT_S:g} s")


class Gated(CustomLLM):
    async def astreaming(self, model, messages, *args, **kwargs):
        yield chunk(ANSWER[0])
        await wait_for(messages, float(os.environ.get("GRADUATE_TEST_PAUSE_S", "0.2")))
        yield chunk(ANSWER[1])
        yield chunk("", finished=True)


gated = Gated()
