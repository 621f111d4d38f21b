"""The on-disk spool: where captured records wait while Kafka is unreachable.

Append-only segment files of length-prefixed, CRC-checked frames under one folder, a cursor file
that says how far replay has got, and a size limit. A torn frame at the tail (a crash mid-write)
is cut off when the spool is opened. One process owns a folder at a time (an flock on `.lock`).

Frame: >I payload length, >I crc32(payload), payload = >H topic length, topic, >H key length, key, value.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FRAME = struct.Struct(">II")
SHORT = struct.Struct(">H")
SEGMENT_SUFFIX = ".spool"


class SpoolError(RuntimeError):
    """The spool folder cannot be used (held by another process, unreadable)."""


@dataclass(frozen=True)
class SpoolRecord:
    topic: str
    key: bytes
    value: bytes

    def encode(self) -> bytes:
        topic = self.topic.encode()
        payload = SHORT.pack(len(topic)) + topic + SHORT.pack(len(self.key)) + self.key + self.value
        return FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> "SpoolRecord":
        (tlen,) = SHORT.unpack_from(payload, 0)
        topic = payload[2:2 + tlen].decode()
        (klen,) = SHORT.unpack_from(payload, 2 + tlen)
        start = 4 + tlen
        return cls(topic, payload[start:start + klen], payload[start + klen:])


@dataclass(frozen=True, order=True)
class SpoolPosition:
    """Just after a record: (segment number, byte offset in it)."""
    segment: int
    offset: int


def _segment_name(n: int) -> str:
    return f"{n:012d}{SEGMENT_SUFFIX}"


def read_frames(path: Path, start: int = 0):
    """Yield (record, end offset, frame size) from `start`; stops at the first torn or corrupt frame."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while True:
            header = f.read(FRAME.size)
            if len(header) < FRAME.size:
                return
            length, crc = FRAME.unpack(header)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            offset += FRAME.size + length
            yield SpoolRecord.decode(payload), offset, FRAME.size + length


class Spool:
    """FIFO of SpoolRecords on disk, bounded by `max_bytes` of unreplayed frames; thread-safe."""

    def __init__(self, folder: Path, max_bytes: int, segment_bytes: int = 8 << 20, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped = 0
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolError(f"spool {self.folder} is held by another process; give each capture client "
                             "its own name") from None
        self._recover()

    # -- state ---------------------------------------------------------------------------------
    @property
    def pending_records(self) -> int:
        return self._records

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if not self._lock_file.closed:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()

    # -- writing -------------------------------------------------------------------------------
    def append(self, records: list[SpoolRecord]) -> list[SpoolRecord]:
        """Append in order; returns the records that did not fit (the caller counts and logs them)."""
        rejected: list[SpoolRecord] = []
        with self._lock:
            for record in records:
                frame = record.encode()
                if self._bytes + len(frame) > self.max_bytes:
                    rejected.append(record)
                    continue
                if self._writer is None or self._writer.tell() >= self.segment_bytes:
                    self._roll()
                self._writer.write(frame)
                self._records += 1
                self._bytes += len(frame)
            if self._writer is not None:
                self._writer.flush()
                if self.fsync:
                    os.fsync(self._writer.fileno())
        self.dropped += len(rejected)
        return rejected

    # -- replay --------------------------------------------------------------------------------
    def read(self, limit: int) -> list[tuple[SpoolRecord, SpoolPosition]]:
        """Up to `limit` records from the cursor, each with the position just after it (nothing is consumed)."""
        out: list[tuple[SpoolRecord, SpoolPosition]] = []
        with self._lock:
            for seg in self._segments:
                if seg < self._cursor.segment:
                    continue
                start = self._cursor.offset if seg == self._cursor.segment else 0
                for record, end, _ in read_frames(self._path(seg), start):
                    out.append((record, SpoolPosition(seg, end)))
                    if len(out) >= limit:
                        return out
        return out

    def commit(self, position: SpoolPosition) -> None:
        """Everything up to `position` is delivered: move the cursor, delete spent segments."""
        with self._lock:
            if position <= self._cursor:
                return
            for seg in self._segments:
                if seg < self._cursor.segment or seg > position.segment:
                    continue
                start = self._cursor.offset if seg == self._cursor.segment else 0
                stop = position.offset if seg == position.segment else None
                for _, end, size in read_frames(self._path(seg), start):
                    if stop is not None and end > stop:
                        break
                    self._records -= 1
                    self._bytes -= size
            self._cursor = position
            for seg in [s for s in self._segments if s < position.segment]:
                self._path(seg).unlink(missing_ok=True)
                self._segments.remove(seg)
            if self._records == 0:
                self._reset()
            self._write_cursor()

    # -- internals -----------------------------------------------------------------------------
    def _path(self, seg: int) -> Path:
        return self.folder / _segment_name(seg)

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        seg = (self._segments[-1] + 1) if self._segments else max(self._cursor.segment, 1)
        self._segments.append(seg)
        self._writer = open(self._path(seg), "ab")

    def _reset(self) -> None:
        """Nothing pending: start over with an empty segment (keeps disk use at zero when idle)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        last = self._segments[-1] if self._segments else self._cursor.segment
        for seg in self._segments:
            self._path(seg).unlink(missing_ok=True)
        self._segments = []
        self._cursor = SpoolPosition(last + 1, 0)

    def _write_cursor(self) -> None:
        tmp = self.folder / "cursor.tmp"
        tmp.write_text(f"{self._cursor.segment} {self._cursor.offset}\n")
        os.replace(tmp, self.folder / "cursor")

    def _recover(self) -> None:
        self._writer = None
        self._segments = sorted(int(p.name[:-len(SEGMENT_SUFFIX)]) for p in self.folder.glob("*" + SEGMENT_SUFFIX)
                                if p.name[:-len(SEGMENT_SUFFIX)].isdigit())
        try:
            seg, off = (self.folder / "cursor").read_text().split()
            self._cursor = SpoolPosition(int(seg), int(off))
        except (FileNotFoundError, ValueError):
            self._cursor = SpoolPosition(self._segments[0] if self._segments else 1, 0)
        self._records = 0
        self._bytes = 0
        for seg in list(self._segments):
            if seg < self._cursor.segment:
                self._path(seg).unlink(missing_ok=True)
                self._segments.remove(seg)
                continue
            start = self._cursor.offset if seg == self._cursor.segment else 0
            end = start
            for _, frame_end, size in read_frames(self._path(seg), start):
                self._records += 1
                self._bytes += size
                end = frame_end
            actual = self._path(seg).stat().st_size
            if actual > end and end >= start:
                log.warning("spool %s: cutting a torn or corrupt tail of %d bytes off %s",
                            self.folder, actual - end, _segment_name(seg))
                os.truncate(self._path(seg), end)
        if self._records == 0:
            self._reset()
        elif self._records:
            log.warning("spool %s holds %d records (%d bytes) from an earlier run; they will be replayed",
                        self.folder, self._records, self._bytes)
