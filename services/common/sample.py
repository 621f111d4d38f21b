"""A bounded, mergeable sample of the distinct inputs of a task: what "how many distinct inputs,
how many answered two ways" needs, without an entry per input forever.

Distinct sampling by hash (Gibbons, VLDB 2001): an input is kept when its hash, read as a fraction
of 2**64, is below `share`; when more than `cap` are kept, `share` halves and the entries above it
go. The hash decides, so two samples (two partitions, two workers) agree on which inputs they keep
and merge by union at the smaller share. Counts over the sample divided by `share` estimate the
whole; while `share` is 1 they are exact.

Entries: 16 hex digits of the input hash -> [first answer or None, conflict 0/1, usable answers].
"""
from __future__ import annotations

from typing import Optional

DEFAULT_CAP = 1024  # per sample (a task on one partition): about 0.5 MiB in memory, 60 KB of JSON


def fraction(digest_hex: str) -> float:
    return int(digest_hex[:16], 16) / 2**64


def kept(digest_hex: str, share: float) -> bool:
    return share >= 1.0 or fraction(digest_hex) < share


def note(entries: dict, digest_hex: str, answer: Optional[str]) -> None:
    """Count one call of an input (already `kept`) answered `answer` (None: it did not parse)."""
    entry = entries.get(digest_hex)
    if entry is None:
        entries[digest_hex] = [answer, 0, 0 if answer is None else 1]
        return
    if answer is not None:
        if entry[0] is None:
            entry[0] = answer
        elif entry[0] != answer:
            entry[1] = 1
        entry[2] += 1


def shrink(entries: dict, share: float, cap: int) -> float:
    """Halve `share` until at most `cap` entries are kept (dropping the others, in place)."""
    while len(entries) > cap:
        share /= 2
        _drop_above(entries, share)
    return share


def _drop_above(entries: dict, share: float) -> None:
    """Drop the entries `share` does not keep (`kept`, for a whole sample at once)."""
    if share >= 1.0:
        return
    for h in [h for h in entries if not int(h[:16], 16) / 2**64 < share]:  # fraction(h), inlined
        del entries[h]


def merge(entries: dict, share: float, other: dict, other_share: float, cap: int) -> float:
    """Add `other` (a sample at `other_share`) into `entries` (in place); returns the new share."""
    share = min(share, other_share)
    _drop_above(entries, share)
    for h, (answer, conflict, n) in other.items():
        if share < 1.0 and not int(h[:16], 16) / 2**64 < share:  # kept(h, share), inlined
            continue
        mine = entries.get(h)
        if mine is None:
            entries[h] = [answer, conflict, n]
        else:
            differs = mine[0] is not None and answer is not None and mine[0] != answer
            entries[h] = [mine[0] if mine[0] is not None else answer, int(bool(mine[1] or conflict or differs)),
                          mine[2] + n]
    return shrink(entries, share, cap)
