"""The trainer worker: a retrain request in, a fresh snapshot, a new served model version and ModelRegistered out.

Every request is answered on data the worker reads itself: it takes a snapshot of the captured
and reviewed topics through the curator's dataset code (what `graduate dataset snapshot` runs),
trains on that snapshot id, and the ModelRegistered it publishes names it. A snapshot that lacks
what the gate needs (too few reviewed holdout items, holdout labels without a training example)
is not trained on: the request goes to the dead-letter topic with that reason.
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
from services.common.tasks import TaskSpec, load_tasks
from services.curator.readiness import readiness_of_manifest
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


class NotReady(ValueError):
    """The fresh snapshot lacks what the gate needs; the message says what."""


async def run(settings: Optional[TrainerSettings] = None, *, stop: Optional[asyncio.Event] = None,
              train: Optional[Callable] = None, holdout_fraction: Optional[float] = None,
              min_reviewed_holdout: Optional[int] = None) -> None:
    """Consume retrain requests until cancelled (or `stop` is set).

    `holdout_fraction` is the curator's split (GRADUATE_CURATOR_HOLDOUT_FRACTION by default) and
    `min_reviewed_holdout` the gate's minimum (GRADUATE_CONTROLLER_MIN_HOLDOUT by default), so a
    snapshot is cut and judged as the curator and the gate would.
    """
    from services.common.settings import load_settings
    from services.controller.settings import ControllerSettings
    from services.curator.settings import CuratorSettings
    from trainer.pipeline import train_for_kind
    from trainer.publish import publish_model_registered

    settings = settings or TrainerSettings()
    if holdout_fraction is None:
        holdout_fraction = load_settings(CuratorSettings).holdout_fraction
    if min_reviewed_holdout is None:
        min_reviewed_holdout = load_settings(ControllerSettings).min_holdout
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
                spec = tasks.get(request.task)
                run_for = train or train_for_kind(spec.kind)
                await _train_one(settings, request, spec, origin[request.request_id], run_for, codec, producer,
                                 publish_model_registered, holdout_fraction, min_reviewed_holdout)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def fresh_snapshot(settings: TrainerSettings, spec: TaskSpec, codec: Codec, holdout_fraction: float,
                         min_reviewed_holdout: int) -> str:
    """Take a snapshot of the topics as they are now; its id, or NotReady with what the gate lacks."""
    from services.curator.snapshot import take_snapshot

    folder, manifest = await take_snapshot(settings, spec, holdout_fraction, codec=codec,
                                           datasets_dir=settings.datasets_dir)
    ready = readiness_of_manifest(manifest, spec.kind, min_reviewed_holdout)
    log.info("trainer: snapshot %s of %s: %s", manifest["snapshot_id"], spec.name, ready.reason)
    if not ready.ready:
        raise NotReady(f"snapshot {manifest['snapshot_id']} of {spec.name} is not trained on: {ready.reason}")
    return manifest["snapshot_id"]


async def _train_one(settings, request: RetrainRequest, spec: TaskSpec, msg, train, codec, producer, publish,
                     holdout_fraction: float, min_reviewed_holdout: int) -> None:
    log.info("trainer: %s model for %s (request %s: %s)", request.kind, request.task, request.request_id,
             request.reason)
    try:
        snapshot_id = await fresh_snapshot(settings, spec, codec, holdout_fraction, min_reviewed_holdout)
        result = await asyncio.to_thread(train, settings, request.task, snapshot_id)
        if settings.publish and result.event is not None:
            event = result.event.model_copy(update={"retrain_request_id": request.request_id})
            await publish(settings, event, codec)
        log.info("trainer: %s version %s registered", request.task, result.version)
    except NotReady as exc:
        log.warning("trainer: %s", exc)
        await send_dead_letter(producer, codec, settings.topic_namespace,
                               dead_letter(msg.topic, msg.partition, msg.offset, PROCESSOR, exc, msg.key, msg.value))
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, never crashes the worker
        log.exception("trainer: run for %s failed", request.task)
        await send_dead_letter(producer, codec, settings.topic_namespace,
                               dead_letter(msg.topic, msg.partition, msg.offset, PROCESSOR, exc, msg.key, msg.value))
