"""The capture client: hand a frontier call to Kafka without ever blocking or failing the caller.

`record_call(...)` (any thread) and `await arecord_call(...)` append a CapturedCall to a bounded
in-memory outbox and return at once: no encoding and no socket write on the caller's path (not even
an event-loop wake-up). A background thread with its own event loop takes the outbox every
`linger_s` (or as soon as `batch_size` records wait), Avro-encodes the batch and hands it to an
idempotent producer (acks=all). A value may be given as a zero-argument callable that builds the
contract; it is called in that thread, so building it costs the caller nothing either. When Kafka
is unreachable, records go to an on-disk spool and are replayed, in order, when it returns.

Exactly one CapturedCall per call_id:
- a call_id already recorded by this client is ignored (a bounded window of recent ids);
- a record handed to the producer is never spooled while the producer lives: aiokafka's idempotent
  producer retries it until the broker takes it, and the broker drops the producer's own retries;
- only records whose delivery definitely failed go to the spool: never handed to the producer
  (Kafka was already known unreachable, the producer could not start, `send` itself failed) or
  failed by the producer with a retriable error (a batch that expired before it was sent).
Residual window (documented, rare; consumers dedupe by call_id anyway): records still unacknowledged
when `stop()` gives up waiting are spooled, and spooled records whose replay was unacknowledged at a
stop are replayed again by the next run; either may then appear twice if the broker had in fact
written them. A batch expired by the producer after a send whose answer was lost (a leaderless
partition for longer than the producer's request timeout) is the same case.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.capture.sender import Sender
from services.capture.spool import Spool, SpoolRecord
from services.common.catalog import CALLS_CAPTURED, TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import CapturedCall, Contract, new_id
from services.common.kafka import make_producer
from services.common.redaction import Redactor
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


class CaptureSettings(BaseSettings):
    """How the capture client buffers (GRADUATE_CAPTURE_*)."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_CAPTURE_", extra="ignore", frozen=True)

    queue_size: int = Field(10_000, ge=1, description="records waiting for the sender; overflow goes to the spool")
    linger_s: float = Field(0.2, gt=0, description="how often the sender takes the waiting records (one batch); "
                            "capture is never waited on, so fewer, larger batches cost less CPU (each batch is a "
                            "socket write to the broker: at 0.05 s the router spent 0.3-0.4 ms more CPU per small "
                            "request, bench_router); also the most a hard crash of the process can lose")
    batch_size: int = Field(500, ge=1, description="this many waiting records wake the sender before linger_s")
    max_in_flight: int = Field(5_000, ge=1, description="records handed to the producer and not yet acknowledged")
    spool_dir: Optional[Path] = Field(None, description="default: <var_dir>/spool/<client name>")
    spool_max_bytes: int = Field(256 << 20, ge=1024)
    spool_segment_bytes: int = Field(8 << 20, ge=1024)
    spool_fsync: bool = False
    unhealthy_after_s: float = Field(3.0, gt=0, description="an unacknowledged record this old: Kafka is unreachable")
    reconnect_backoff_s: float = Field(2.0, gt=0, description="between producer starts and replay probes")
    send_block_s: float = Field(0.5, gt=0, description="longest the sender waits for room in the producer")
    replay_batch: int = Field(500, ge=1)
    stop_timeout_s: float = Field(10.0, ge=0)
    dedupe_window: int = Field(100_000, ge=1)


@dataclass
class CaptureStats:
    state: str = "stopped"  # stopped | connecting | connected | spooling
    queued: int = 0
    in_flight: int = 0
    spool_records: int = 0
    spool_bytes: int = 0
    delivered: int = 0
    spooled: int = 0
    replayed: int = 0
    duplicates_ignored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def queue_depth(self) -> int:
        return self.queued + self.in_flight


def redact_call(call: CapturedCall, redactor: Redactor) -> CapturedCall:
    """The call with PII in its input and answers replaced by placeholders (pure)."""
    red_input, red_raw = redactor(call.input), redactor(call.output_raw)
    red_output = redactor(call.output) if call.output is not None else None
    changed = red_input.changed or red_raw.changed or bool(red_output and red_output.changed)
    if not changed:
        return call
    return call.model_copy(update={"input": red_input.text, "output_raw": red_raw.text,
                                   "output": red_output.text if red_output else None, "redacted": True})


class CaptureClient:
    """Publishes CapturedCalls (and other contracts) through a queue, a producer and a spool."""

    def __init__(self, kafka: KafkaSettings, *, name: str = "capture", namespace: str = "",
                 settings: CaptureSettings | None = None, var_dir: Path | None = None,
                 codec: Codec | None = None, producer_factory: Callable[..., Any] = make_producer,
                 redactor: Redactor | None = None) -> None:
        from services.common.settings import REPO_ROOT

        self.kafka = kafka
        self.name = name
        self.namespace = namespace
        self.settings = settings or CaptureSettings()
        self.codec = codec or Codec()
        self._producer_factory = producer_factory
        # Every captured call is redacted here too (idempotent: the router's placeholders never match),
        # so a service publishing its own calls cannot leak PII into the topic.
        self.redactor = redactor or Redactor()
        folder = self.settings.spool_dir or Path(var_dir or REPO_ROOT / "var") / "spool" / name
        self.spool = Spool(folder, self.settings.spool_max_bytes, self.settings.spool_segment_bytes,
                           self.settings.spool_fsync)
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()
        self._stats = CaptureStats()
        self._outbox: collections.deque = collections.deque()
        self._accepting = False  # True while the sender thread takes the outbox (under _lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._last_full_log = 0.0

    # -- public API ----------------------------------------------------------------------------
    def record_call(self, call: CapturedCall | None = None, /, **fields: Any) -> str:
        """Capture one frontier call (a CapturedCall, or its fields); returns its call_id at once."""
        if call is None:
            fields["call_id"] = fields.get("call_id") or new_id()
            call = CapturedCall(**fields)
        call = redact_call(call, self.redactor)
        self.publish(CALLS_CAPTURED, call.call_id, call, dedupe=True)
        return call.call_id

    def defer_call(self, call_id: str, build: Callable[[], CapturedCall]) -> bool:
        """Capture one frontier call whose CapturedCall `build` makes later, in the sender thread (built,
        redacted and encoded there: the caller pays a lock and an append); False if call_id was seen."""
        return self.publish(CALLS_CAPTURED, call_id, lambda: redact_call(build(), self.redactor), dedupe=True)

    async def arecord_call(self, call: CapturedCall | None = None, /, **fields: Any) -> str:
        """`record_call` for async code: never awaits the network, returns the call_id."""
        return self.record_call(call, **fields)

    def publish(self, spec: TopicSpec, key: str | bytes | None, value: Contract | Callable[[], Contract], *,
                dedupe: bool = False) -> bool:
        """Queue any catalog contract (or a callable that builds it, called in the sender thread);
        False when `dedupe` and this key was already published here."""
        key_bytes = key.encode() if isinstance(key, str) else (key or b"")
        topic = topic_name(spec, self.namespace)
        if dedupe and not self._first_time(topic, key_bytes):
            return False
        item = (topic, key_bytes, value)
        with self._lock:  # the sender closes the hand-off under this lock: nothing slips past its last drain
            if self._accepting and len(self._outbox) < self.settings.queue_size:
                self._outbox.append(item)
                if len(self._outbox) == self.settings.batch_size:  # a full batch: no need to wait for linger_s
                    self._wake_sender()
                return True
        record = self._encode(item)
        if record is not None:
            self._spool([record], reason="overflow")
        return True

    def stats(self) -> CaptureStats:
        """A snapshot of the counters, queue and spool."""
        s = self._stats
        return dataclasses.replace(s, queued=len(self._outbox), spool_records=self.spool.pending_records,
                                   spool_bytes=self.spool.pending_bytes, dropped=dict(s.dropped))

    def start(self) -> "CaptureClient":
        """Start the sender thread (returns at once; Kafka may still be unreachable)."""
        if self._thread is not None:
            return self
        self._started.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"capture-{self.name}", daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        """Deliver or spool everything queued (waiting at most stop_timeout_s for Kafka), then stop."""
        thread, loop = self._thread, self._loop
        if thread is None:
            self.spool.close()
            return
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopping.set)
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass
        thread.join()
        self._thread = None
        self.spool.close()

    async def astart(self) -> "CaptureClient":
        """`start` from async code. The sender keeps its own thread and loop even then: measured on the
        router, a sender task in the request loop costs the small path twice as much as the thread."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> "CaptureClient":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "CaptureClient":
        return await self.astart()

    async def __aexit__(self, *exc: Any) -> None:
        await self.astop()

    # -- caller side helpers -------------------------------------------------------------------
    def _first_time(self, topic: str, key: bytes) -> bool:
        with self._lock:
            if (topic, key) in self._seen:
                self._stats.duplicates_ignored += 1
                return False
            self._seen[(topic, key)] = None
            if len(self._seen) > self.settings.dedupe_window:
                self._seen.popitem(last=False)
            return True

    def _wake_sender(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except (AttributeError, RuntimeError):  # the sender is stopping; it drains the outbox at its end
            pass

    def _take(self, limit: int | None = None) -> list:
        """The records waiting in the outbox, oldest first (at most `limit`)."""
        with self._lock:
            if limit is None or len(self._outbox) <= limit:
                items, self._outbox = list(self._outbox), collections.deque()
            else:
                items = [self._outbox.popleft() for _ in range(limit)]
        return items

    def _encode(self, item: tuple[str, bytes, Contract | Callable[[], Contract]]) -> SpoolRecord | None:
        topic, key, value = item
        try:
            if callable(value):  # built here, in the sender thread, not on the caller's path
                value = value()
            return SpoolRecord(topic, key, self.codec.encode(value))
        except CodecError as exc:  # a contract that does not fit its schema: a bug, said loudly
            self._drop(1, "encode_error")
            log.error("capture %s: cannot encode %s for %s: %s; dropped", self.name, type(value).__name__, topic, exc)
            return None
        except Exception:  # a builder that failed: a bug, said loudly, never raised into the caller
            self._drop(1, "build_error")
            log.exception("capture %s: cannot build the record for %s (key %r); dropped", self.name, topic, key)
            return None

    def _spool(self, records: list[SpoolRecord], reason: str) -> None:
        if not records:
            return
        rejected = self.spool.append(records)
        self._stats.spooled += len(records) - len(rejected)
        if rejected:
            self._drop(len(rejected), "spool_full")
            now = time.monotonic()
            if now - self._last_full_log > 10:
                self._last_full_log = now
                log.error("capture %s: spool %s is full (%d of %d bytes): dropped %d record(s) (%s); "
                          "%d dropped since start", self.name, self.spool.folder, self.spool.pending_bytes,
                          self.spool.max_bytes, len(rejected), reason, self.spool.dropped)

    def _drop(self, n: int, reason: str) -> None:
        with self._lock:
            self._stats.dropped[reason] = self._stats.dropped.get(reason, 0) + n

    # -- the sender thread ---------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            # asyncio's own loop, like the router's (uvloop was no faster there; the records it seemed to
            # lose in tests/reliability/test_broker_kill.py were the test reading before the drain)
            asyncio.run(self._run())
        except Exception:  # never silent: the log says why capture stopped
            log.exception("capture %s: sender thread failed", self.name)
        finally:
            with self._lock:
                self._accepting = False
                self._loop = None
            left = [r for r in (self._encode(item) for item in self._take()) if r is not None]
            self._spool(left, reason="sender_stopped")  # a sender that failed leaves nothing behind
            self._stats.state = "stopped"
            self._started.set()

    async def _run(self) -> None:
        sender = Sender(self)
        with self._lock:
            self._wake = asyncio.Event()
            self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._accepting = True
        self._started.set()
        await sender.run()
