"""The trainer worker: a retrain request in, a new served model version and ModelRegistered out.

Training takes minutes, so this is a plain aiokafka consumer (not a stream agent): requests
that arrive together are coalesced to one run per task, the run happens in a thread while the
consumer keeps heartbeating, and the offset is committed after the run. A request that cannot be
decoded or whose run fails goes to the dead-letter topic with the reason.
`services.workers` starts it as `graduate worker trainer`; `graduate trainer-service` too.
A run cannot be interrupted half-way (it is a thread): on SIGTERM the worker stops after the
current run; the request's offset is committed only after its run, so a killed worker retrains.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Callable, Optional

from aiokafka import AIOKafkaConsumer

from services.common.catalog import RETRAIN_REQUESTS, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import RetrainRequest, utcnow
from services.common.kafka import dead_letter, make_producer, send_dead_letter
from services.common.tasks import load_tasks
from trainer.settings import TrainerSettings

log = logging.getLogger("graduate.trainer")
PROCESSOR = "trainer"
MAX_REQUEST_AGE = timedelta(days=1)  # older requests were made for a model that has moved on
POLL_INTERVAL_MS = 3 * 3600 * 1000  # a run may outlast aiokafka's default 5 minutes between polls


def requests_to_run(requests: list[RetrainRequest], now=None) -> list[RetrainRequest]:
    """The newest fresh request per task, in arrival order of their tasks (pure)."""
    now = now or utcnow()
    newest: dict[str, RetrainRequest] = {}
    for request in requests:
        if now - request.ts <= MAX_REQUEST_AGE:
            newest[request.task] = request
    return list(newest.values())


async def run(settings: Optional[TrainerSettings] = None, *, stop: Optional[asyncio.Event] = None,
              train: Optional[Callable] = None) -> None:
    """Consume retrain requests until cancelled (or `stop` is set)."""
    from trainer.pipeline import train_for_kind
    from trainer.publish import publish_model_registered

    settings = settings or TrainerSettings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    codec = Codec(settings.schema_registry_url)
    tasks = load_tasks(settings.tasks_file)
    topic = topic_name(RETRAIN_REQUESTS, settings.topic_namespace)
    group = f"{settings.topic_namespace}{settings.consumer_group}"  # namespaced, as the faust workers' groups
    consumer = AIOKafkaConsumer(topic, **settings.kafka.client_config(), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_interval_ms=POLL_INTERVAL_MS, max_poll_records=100)
    producer = make_producer(settings.kafka)
    await consumer.start()
    await producer.start()
    log.info("trainer: waiting for retrain requests on %s", topic)
    try:
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=1000)
            requests, origin = [], {}
            for messages in batches.values():
                for msg in messages:
                    try:
                        request = codec.decode(msg.value, RetrainRequest)
                        spec = tasks.get(request.task)
                        if not spec.graduatable:
                            raise ValueError(f"task {request.task} is {spec.kind}; it is not trained")
                        requests.append(request)
                        origin[request.request_id] = msg
                    except (CodecError, KeyError, ValueError) as exc:
                        await send_dead_letter(producer, codec, settings.topic_namespace,
                                               dead_letter(msg.topic, msg.partition, msg.offset, PROCESSOR, exc,
                                                           msg.key, msg.value))
            for request in requests_to_run(requests):
                run_for = train or train_for_kind(tasks.get(request.task).kind)
                await _train_one(settings, request, origin[request.request_id], run_for, codec, producer,
                                 publish_model_registered)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def _train_one(settings, request: RetrainRequest, msg, train, codec, producer, publish) -> None:
    log.info("trainer: retraining %s (request %s: %s)", request.task, request.request_id, request.reason)
    try:
        result = await asyncio.to_thread(train, settings, request.task, "latest")
        if settings.publish and result.event is not None:
            event = result.event.model_copy(update={"retrain_request_id": request.request_id})
            await publish(settings, event, codec)
        log.info("trainer: %s version %s registered", request.task, result.version)
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, never crashes the worker
        log.exception("trainer: run for %s failed", request.task)
        await send_dead_letter(producer, codec, settings.topic_namespace,
                               dead_letter(msg.topic, msg.partition, msg.offset, PROCESSOR, exc, msg.key, msg.value))
