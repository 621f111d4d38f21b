"""Input normalisation and the deterministic train/holdout split.

The split is a pure function of (task, normalised input): a duplicate can never sit on both
sides and a call's side never changes as data grows.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Literal

Split = Literal["train", "holdout"]
_WS = re.compile(r"\s+")


def normalise_input(text: str) -> str:
    """Unicode NFKC, case-folded, NFKC again (case folding can undo it: "ß\u0301" → "ss\u0301"),
    whitespace collapsed and trimmed; idempotent. ASCII text (most inputs) takes a shortcut with the
    same result: NFKC leaves it as it is, case folding is lower-casing, `split` splits on `\s`."""
    if text.isascii():
        return " ".join(text.lower().split())
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _WS.sub(" ", folded).strip()


def input_hash(task: str, normalised: str) -> bytes:
    return hashlib.sha256(f"{task}\x00{normalised}".encode()).digest()


def split_of(task: str, text: str, holdout_fraction: float) -> Split:
    """'holdout' for a stable `holdout_fraction` share of distinct normalised inputs."""
    return split_of_hash(input_hash(task, normalise_input(text)), holdout_fraction)


def split_of_hash(digest: bytes, holdout_fraction: float) -> Split:
    """`split_of` from the input's `input_hash` (when the caller has it already)."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "holdout" if bucket < holdout_fraction else "train"


def hash_of_input(spec, text: str) -> str:
    """The hex hash the curator files a task's input under: redacted by the task's patterns (as the
    curator's admission does), normalised, hashed with the task. `spec`: a TaskSpec."""
    from services.common.redaction import Redactor

    return input_hash(spec.name, normalise_input(Redactor(spec.redaction.patterns)(text).text)).hex()
