"""The page's Kafka side: follow the topics it shows into a `ReviewView`, publish reviews.

Why a follower (a services.common.follow.TopicFollower) rather than the curator's `review_queue()`
per request: that function replays the dataset topic and the answers on every call; the page
instead replays each followed topic once at start (no consumer group: every replica sees
everything) and then applies new records live, so a queue or task page is a read of memory. The
queue's inputs come from the dataset topic that the curator writes (one record per distinct input
and captured partition, and the forgotten inputs), never from the captured calls: the page is as
fresh as the curator (its lag). `ready` is set once every partition is read to the
end it had at start; pages say "replaying" until then. A topic missing at start is looked for
again every few seconds. Undecodable records are counted and logged, not dead-lettered: this is
a reader, and the processors that own those topics already dead-letter what they cannot read.
"""
from __future__ import annotations

import logging

from services.common import follow
from services.common.catalog import LABELS_REVIEWED, RETRAIN_REQUESTS, TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import RetrainRequest, ReviewedLabel
from services.common.kafka import make_producer
from services.common.settings import KafkaSettings
from services.review.view import ReviewView

log = logging.getLogger("graduate.review")
MISSING_RECHECK_S = 5.0


class KafkaPublisher:
    """An idempotent producer (acks=all) of ReviewedLabel records keyed by call_id, and of a
    person's approval of a graduation (a RetrainRequest keyed by task)."""

    def __init__(self, kafka: KafkaSettings, namespace: str, codec: Codec) -> None:
        self.topic = topic_name(LABELS_REVIEWED, namespace)
        self.requests_topic = topic_name(RETRAIN_REQUESTS, namespace)
        self.codec = codec
        self.producer = make_producer(kafka, client_id=f"{kafka.client_id}-review")

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, review: ReviewedLabel) -> tuple[int, int]:
        meta = await self.producer.send_and_wait(self.topic, self.codec.encode(review), key=review.call_id.encode())
        return meta.partition, meta.offset

    async def request_model(self, request: RetrainRequest) -> None:
        await self.producer.send_and_wait(self.requests_topic, self.codec.encode(request), key=request.task.encode())


class TopicFollower(follow.TopicFollower):
    """Replays, then follows, the view's topics into it; ready with the topics that exist."""

    name = "review follower"

    def __init__(self, kafka: KafkaSettings, namespace: str, codec: Codec, view: ReviewView, *,
                 retry_s: float = 2.0, client_id: str = "graduate-review") -> None:
        self.specs: dict[str, TopicSpec] = {topic_name(s, namespace): s for s in view.followed}
        super().__init__(kafka, self.specs, require_all=False, retry_s=retry_s, missing_recheck_s=MISSING_RECHECK_S,
                         client_id=client_id, max_poll_records=5000)
        self.codec = codec
        self.view = view
        self.undecodable = 0

    def apply(self, record) -> None:
        spec = self.specs[record.topic]
        key = follow.key_text(record)
        if record.value is None:
            self.view.apply(spec, None, key=key, partition=record.partition, offset=record.offset)
            return
        try:
            value = self.codec.decode(record.value, spec.value)
        except CodecError as exc:
            self.undecodable += 1
            log.warning("review follower: skipped an undecodable record at %s[%d]@%d: %s", record.topic,
                        record.partition, record.offset, exc)
            return
        self.view.apply(spec, value, key=key, partition=record.partition, offset=record.offset)
