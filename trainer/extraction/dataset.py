"""From JSON answers to BIO tags: where each field's value sits in the input, tag by tag.

The frontier answers with strings, not offsets, so a value is located in the input (first
occurrence, whole words preferred, then case-insensitive); an example whose value is not in the
input (the answer rephrased it) cannot be tagged and is left out of training, counted. Two
fields over the same characters cannot both be tagged: the earlier field in the task's order
keeps them, counted. Tags come from the fast tokenizer's offset_mapping: the first token that
overlaps a value is B-field, the following ones I-field, special tokens -100 (no loss).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

IGNORE = -100
Span = tuple[int, int]


def tag_names(fields: Sequence[str]) -> list[str]:
    """["O", "B-f1", "I-f1", "B-f2", ...] in the task's field order."""
    return ["O"] + [f"{prefix}-{name}" for name in fields for prefix in ("B", "I")]


def field_values(label: str, fields: Sequence[str]) -> dict[str, Optional[str]]:
    """The fields of a canonical JSON label (missing keys are null; values as strings)."""
    obj = json.loads(label)
    return {f: (None if obj.get(f) in (None, "") else str(obj[f])) for f in fields}


def locate(text: str, value: str) -> Optional[Span]:
    """Where `value` sits in `text`: whole-word match first, then any, then ignoring case."""
    if not value:
        return None
    for pattern, flags in ((rf"(?<!\w){re.escape(value)}(?!\w)", 0), (re.escape(value), 0),
                           (re.escape(value), re.IGNORECASE)):
        match = re.search(pattern, text, flags)
        if match:
            return match.span()
    return None


@dataclass
class AlignStats:
    examples: int = 0
    unalignable: int = 0  # a value is not in the input: left out of training
    overlaps: int = 0  # a field's value overlaps an earlier field's: that field is not tagged
    values: Counter = field(default_factory=Counter)  # by field: values tagged

    def as_dict(self) -> dict:
        return {"examples": self.examples, "unalignable": self.unalignable, "overlaps": self.overlaps,
                "values": dict(self.values)}


def align(text: str, values: dict[str, Optional[str]], fields: Sequence[str],
          stats: Optional[AlignStats] = None) -> Optional[dict[str, Span]]:
    """field -> character span of its value in `text`; None when some value is not there."""
    stats = stats if stats is not None else AlignStats()
    stats.examples += 1
    spans: dict[str, Span] = {}
    for name in fields:
        value = values.get(name)
        if value is None:
            continue
        span = locate(text, value)
        if span is None:
            stats.unalignable += 1
            return None
        if any(span[0] < e and s < span[1] for s, e in spans.values()):
            stats.overlaps += 1
            continue
        spans[name] = span
        stats.values[name] += 1
    return spans


def bio_tags(offsets: Sequence[Span], special: Sequence[int], spans: dict[str, Span],
             tag_index: dict[str, int]) -> list[int]:
    """One tag id per token: B-/I-field over a value's characters, O elsewhere, IGNORE on specials."""
    tags = []
    started: set[str] = set()
    for (start, end), is_special in zip(offsets, special):
        if is_special or end <= start:
            tags.append(IGNORE)
            continue
        tag = tag_index["O"]
        for name, (s, e) in spans.items():
            if start < e and s < end:
                tag = tag_index[("I-" if name in started else "B-") + name]
                started.add(name)
                break
        tags.append(tag)
    return tags


@dataclass(frozen=True)
class Encoded:
    """Token ids and tags of examples that could be tagged, with their rows in the input lists."""

    rows: list[int]
    ids: list[list[int]]
    tags: list[list[int]]
    stats: AlignStats


def encode_tagged(tokenizer, texts: Sequence[str], labels: Sequence[str], fields: Sequence[str],
                  max_length: int) -> Encoded:
    """Tokenise (truncating at max_length) and tag; examples that cannot be aligned are skipped."""
    tag_index = {name: i for i, name in enumerate(tag_names(fields))}
    stats = AlignStats()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    rows, ids, tags = [], [], []
    for i, (text, label) in enumerate(zip(texts, labels)):
        spans = align(text, field_values(label, fields), fields, stats)
        if spans is None:
            continue
        rows.append(i)
        ids.append(enc["input_ids"][i])
        tags.append(bio_tags(enc["offset_mapping"][i], enc["special_tokens_mask"][i], spans, tag_index))
    return Encoded(rows, ids, tags, stats)
