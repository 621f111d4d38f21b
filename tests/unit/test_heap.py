"""Giving a worker's freed memory back: when the batch loop does it, and that it does."""
from __future__ import annotations

import gc
import platform
import weakref

import pytest

from services.common import heap


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_released_once_idle_after_work_and_every_period_while_busy(monkeypatch):
    clock, released = Clock(), []
    monkeypatch.setattr(heap.time, "monotonic", clock)
    monkeypatch.setattr(heap, "release_memory", lambda: released.append(clock.now))
    release = heap.HeapRelease(every_s=10, idle_every_s=1, quiet_every_s=60)
    clock.now = 5
    assert release(idle=True) is False  # idle without work since the start: wait a quiet minute
    for t in range(6, 30):  # busy: one release every 10 s
        clock.now = t
        release(idle=False)
    assert released == [10, 20]
    clock.now = 30
    assert release(idle=True) is True  # idle after work: at once
    clock.now = 31.5
    assert release(idle=True) is False  # still idle: nothing new within the quiet minute
    clock.now = 32
    assert release(idle=False) is False  # a batch within the period: no release while busy
    clock.now = 32.5
    assert release(idle=True) is True  # idle after work
    clock.now = 33
    release(idle=False)
    clock.now = 33.2
    assert release(idle=True) is False  # idle again within a second of the last release
    clock.now = 33.6
    assert release(idle=True) is True
    clock.now = 93
    assert release(idle=True) is False  # idle since: once a minute (pages and timers allocate too)
    clock.now = 94
    assert release(idle=True) is True
    assert released == [10, 20, 30, 32.5, 33.6, 94]


def test_release_memory_collects_cycles_the_raised_thresholds_leave():
    class Node:
        pass

    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        gc.collect(0)
        gc.collect(1)  # a generation-1 pass promotes the live cycle to the oldest generation
        del a, b
        gc.collect(0)
        assert alive() is not None  # unreachable now, but only a full collection frees it
        heap.release_memory()
        assert alive() is None
    finally:
        gc.set_threshold(*old)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_found_on_glibc():
    assert heap.MALLOC_TRIM is not None
    assert isinstance(heap.release_memory(), bool)  # called with glibc's signature
