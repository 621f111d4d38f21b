"""Give a long-running worker's freed memory back to the system: a full garbage collection, then
glibc's `malloc_trim`.

Why (issue 16, measured on the profiler over 1 M calls through the broker): `BatchProcessor.run`
raises the collector's thresholds for speed, so a full collection came every ~100 M allocations;
cyclic garbage (aiokafka's metadata and fetch futures, ~20 MiB of the heap at times with what they
hold) lived on for minutes, and glibc kept the pages freed inside its heap (40–60 MiB free in a
70–130 MiB heap). The worker's RSS after 1 M calls swung between 1.0 and 1.6x that after 100 k.
The batch loop (services/common/batch.py) collects everything and trims when it goes idle after work,
at most every 10 s while busy and every minute while idle.
"""
from __future__ import annotations

import ctypes
import gc
import time
from typing import Callable, Optional


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (musl and macOS have none: collect only)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Collect all generations, then return free heap pages; True when glibc returned some."""
    gc.collect()
    return bool(MALLOC_TRIM(0)) if MALLOC_TRIM is not None else False


class HeapRelease:
    """When to call `release_memory()` in a consumer loop: once the loop goes idle after work (so a
    quiet worker holds only what it uses), at most every `every_s` seconds while it is busy (a full
    collection of a worker's heap took 10–30 ms, the trim 1–3 ms: ~0.3 % of a core), and every
    `quiet_every_s` while it stays idle (what its pages and timers allocated meanwhile)."""

    def __init__(self, every_s: float = 10.0, idle_every_s: float = 1.0, quiet_every_s: float = 60.0) -> None:
        self.every_s, self.idle_every_s, self.quiet_every_s = every_s, idle_every_s, quiet_every_s
        self.at, self.busy = time.monotonic(), False

    def __call__(self, idle: bool) -> bool:
        """Called once per batch (`idle`: the batch was empty); True when it released."""
        self.busy |= not idle
        wait = self.every_s if not idle else self.idle_every_s if self.busy else self.quiet_every_s
        if time.monotonic() - self.at >= wait:
            release_memory()
            self.at, self.busy = time.monotonic(), False
            return True
        return False
