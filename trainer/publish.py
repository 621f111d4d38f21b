"""ModelRegistered: the trainer's one message, keyed task/version on the compacted models topic."""
from __future__ import annotations

import json
from typing import Any, Optional

from services.common.catalog import MODELS, topic_name
from services.common.codec import Codec
from services.common.contracts import ModelRegistered, PairedCounts
from services.common.kafka import make_producer
from services.common.settings import CommonSettings


def model_registered(*, task: str, version: int, base_model: str, snapshot_id: str, holdout: dict[str, Any],
                     threshold: dict[str, Any], ece_before: float, ece_after: float, temperature: float,
                     labels: list[str], metrics: dict[str, Any], artifact_uri: str,
                     model_card_uri: Optional[str], triton_model: str) -> ModelRegistered:
    """The event from the evaluation's figures (pure)."""
    return ModelRegistered(
        task=task, version=str(version), base_model=base_model, snapshot_id=snapshot_id,
        holdout_size=holdout["n"], gold_reviewed=holdout["gold_reviewed"], gold_frontier=holdout["gold_frontier"],
        small_accuracy=holdout["small_accuracy"], frontier_accuracy=holdout["frontier_accuracy"],
        agreement=holdout["agreement"], macro_f1=holdout["macro_f1"], paired=PairedCounts(**holdout["paired"]),
        threshold=threshold["threshold"], coverage=threshold["coverage"], kept_accuracy=threshold["kept_accuracy"],
        predicted_fallback_rate=threshold["predicted_fallback_rate"], ece_before=ece_before, ece_after=ece_after,
        temperature=temperature, labels=labels, metrics_json=json.dumps(metrics, sort_keys=True, default=str),
        artifact_uri=artifact_uri, model_card_uri=model_card_uri, triton_model=triton_model)


def registration_key(event: ModelRegistered) -> bytes:
    return f"{event.task}/{event.version}".encode()


async def publish_model_registered(settings: CommonSettings, event: ModelRegistered,
                                   codec: Optional[Codec] = None) -> str:
    """Send the event and wait for the broker's ack; returns the topic it went to."""
    codec = codec or Codec(settings.schema_registry_url)
    topic = topic_name(MODELS, settings.topic_namespace)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, codec.encode(event), key=registration_key(event))
    finally:
        await producer.stop()
    return topic
