"""The on-disk spool: FIFO across segments, cursor survives a restart, torn tails, the size limit."""
from __future__ import annotations

import pytest

from services.capture.spool import Spool, SpoolError, SpoolRecord


def rec(i: int, size: int = 10) -> SpoolRecord:
    return SpoolRecord("ns.graduate.calls.captured", f"call-{i}".encode(), bytes([i % 256]) * size)


def test_fifo_across_segments_and_commit(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert spool.append([rec(i) for i in range(20)]) == []
    assert spool.pending_records == 20
    assert len(list(tmp_path.glob("*.spool"))) > 1
    first = spool.read(7)
    assert [r.key for r, _ in first] == [f"call-{i}".encode() for i in range(7)]
    spool.commit(first[-1][1])
    assert spool.pending_records == 13
    rest = spool.read(100)
    assert [r.key for r, _ in rest] == [f"call-{i}".encode() for i in range(7, 20)]
    spool.commit(rest[-1][1])
    assert (spool.pending_records, spool.pending_bytes) == (0, 0)
    assert list(tmp_path.glob("*.spool")) == []  # an empty spool leaves no segments behind
    spool.close()


def test_cursor_and_records_survive_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=150)
    spool.append([rec(i) for i in range(10)])
    spool.commit(spool.read(4)[-1][1])
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=150)
    assert again.pending_records == 6
    assert [r.key for r, _ in again.read(100)] == [f"call-{i}".encode() for i in range(4, 10)]
    again.append([rec(99)])
    assert again.read(100)[-1][0] == rec(99)
    again.close()


def test_a_torn_tail_is_cut_off(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([rec(1), rec(2)])
    spool.close()
    segment = next(tmp_path.glob("*.spool"))
    with open(segment, "ab") as f:
        f.write(rec(3).encode()[:-4])  # a crash in the middle of a write
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.pending_records == 2
    again.append([rec(4)])
    assert [r.key for r, _ in again.read(10)] == [b"call-1", b"call-2", b"call-4"]
    again.close()


def test_the_size_limit_rejects_and_counts(tmp_path):
    frame = len(rec(0).encode())
    spool = Spool(tmp_path, max_bytes=frame * 3)
    rejected = spool.append([rec(i) for i in range(5)])
    assert [r.key for r in rejected] == [b"call-3", b"call-4"]
    assert spool.pending_records == 3 and spool.dropped == 2
    spool.commit(spool.read(1)[0][1])  # room again
    assert spool.append([rec(9)]) == []
    spool.close()


def test_one_owner_per_folder(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="another process"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()


def test_frames_round_trip():
    r = SpoolRecord("t", b"", b"\x00\x01value")
    encoded = r.encode()
    assert SpoolRecord.decode(encoded[8:]) == r
