"""A backend service that calls the frontier itself and captures each call with the capture client.

Run it against `make up` (Kafka on 127.0.0.1:9092, topics ensured) and the simulator
(`graduate frontier-sim`):  python -m services.capture.example
"""
from __future__ import annotations

import time

from openai import OpenAI

from services.capture import CaptureClient
from services.common.contracts import new_id
from services.common.settings import CommonSettings

TASK = "banking77-intent"
SYSTEM = "Classify the online-banking message; answer with one intent label."


def main() -> None:
    settings = CommonSettings()
    frontier = OpenAI(base_url="http://127.0.0.1:8090/v1", api_key="not-needed-for-the-simulator")
    with CaptureClient(settings.kafka, name="example", namespace=settings.topic_namespace,
                       var_dir=settings.var_dir) as capture:
        for text in ["My card still hasn't arrived", "Why was I charged a fee for topping up?"]:
            call_id, start = new_id(), time.perf_counter()
            answer = frontier.chat.completions.create(
                model="gpt-4o-mini", extra_headers={"X-Graduate-Task": TASK},
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])
            label = answer.choices[0].message.content
            capture.record_call(  # returns at once; never raises for Kafka trouble
                call_id=call_id, task=TASK, input=text, output_raw=label, output=label,
                model=answer.model, latency_ms=(time.perf_counter() - start) * 1000,
                prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                tenant="example-service")
            print(f"{call_id}  {label!r}  <- {text!r}")
        print(capture.stats())
    # Leaving the block flushes what is queued (or spools it to var/spool/example/ if Kafka is away).


if __name__ == "__main__":
    main()
