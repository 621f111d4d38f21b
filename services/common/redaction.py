"""PII redaction before anything is captured: e-mail addresses, IBANs, card numbers, phone numbers,
and per-task patterns (docs/REDACTION.md lists what is and is not redacted).

Captured calls become training data and sit in Kafka for 90 days, so personal data is replaced by
placeholders (`<EMAIL>`, `<IBAN>`, `<CARD>`, `<PHONE>`, `<NAME>` for a configured pattern NAME) on
the way in.
Pure functions; the placeholders are stable so the small model learns from redacted text the way
it will see it when served.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

# The local part: a dot-atom (RFC 5322 atext) or a quoted string ("john doe"@…); the domain: a
# name with a letter TLD, or an address literal ([127.0.0.1], [IPv6:2001:db8::1]).
_LOCAL = r"(?:(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+|\"(?:[^\"\\\r\n]|\\.){1,64}\")"
_DOMAIN = (r"(?:[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,}(?![\w-])"
           r"|\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]{2,45})\])")
EMAIL = re.compile(_LOCAL + r" ?@ ?" + _DOMAIN, re.IGNORECASE)
# Country code, check digits, then 11–30 letters or digits, optionally in groups of four; mod 97 decides.
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}")
IBAN_LENGTH = (15, 34)
# 13–19 digits, optionally grouped by single spaces or dashes; the Luhn check decides.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# An optional +country code and area code in parentheses, then digit groups; 9–15 digits in all.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w])")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DIGIT = re.compile(r"\d")
PHONE_DIGITS = (9, 15)
CARD_MIN_DIGITS = 13  # CARD's shortest match
ASCII_DIGITS = "0123456789"


@dataclass(frozen=True)
class Redacted:
    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.counts)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """The ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    if not IBAN_LENGTH[0] <= len(compact) <= IBAN_LENGTH[1] or not compact[:2].isalpha():
        return False
    moved = (compact[4:] + compact[:4]).upper()
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _replace_ibans(text: str, counts: dict[str, int]) -> str:
    """Each candidate run is cut back, a group at a time, to its longest valid IBAN (the run may go
    on into the next word: "DE89 3704 0044 0532 0130 00 thanks")."""
    out, pos = [], 0
    while (m := IBAN.search(text, pos)) is not None:
        run = m.group()
        ends = [i + 1 for i, ch in enumerate(run) if ch.isalnum() and (i + 1 == len(run) or not run[i + 1].isalnum()
                                                                        or run[i + 1].isalpha() != ch.isalpha())]
        end = next((e for e in reversed(ends) if iban_ok(re.sub(r"[ -]", "", run[:e]))), None)
        if end is None:
            out.append(text[pos:m.start() + 1])
            pos = m.start() + 1
            continue
        out.append(text[pos:m.start()] + placeholder("IBAN"))
        counts["IBAN"] = counts.get("IBAN", 0) + 1
        pos = m.start() + end
    return "".join(out) + text[pos:]


def placeholder(name: str) -> str:
    return f"<{name.upper()}>"


def _replace_cards(text: str, counts: dict[str, int]) -> str:
    def sub(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        if not luhn_ok(digits):
            return m.group()
        counts["CARD"] = counts.get("CARD", 0) + 1
        return placeholder("CARD")
    return CARD.sub(sub, text)


def _replace_phones(text: str, counts: dict[str, int]) -> str:
    def sub(m: re.Match) -> str:
        found = m.group()
        n = sum(ch.isdigit() for ch in found)
        if not PHONE_DIGITS[0] <= n <= PHONE_DIGITS[1] or ISO_DATE.fullmatch(found):
            return found
        counts["PHONE"] = counts.get("PHONE", 0) + 1
        return placeholder("PHONE")
    return PHONE.sub(sub, text)


def _replace(pattern: re.Pattern, name: str, text: str, counts: dict[str, int]) -> str:
    new, n = pattern.subn(placeholder(name), text)
    if n:
        counts[name.upper()] = counts.get(name.upper(), 0) + n
    return new


def compile_patterns(patterns: Mapping[str, str]) -> tuple[tuple[str, re.Pattern], ...]:
    """Extra name -> regex pairs from a task spec, compiled; ValueError names a bad one."""
    compiled = []
    for name, regex in patterns.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"redaction pattern name {name!r}: use letters, digits and '_'")
        try:
            compiled.append((name, re.compile(regex)))
        except re.error as exc:
            raise ValueError(f"redaction pattern {name!r}: {exc}") from None
    return tuple(compiled)


def redact(text: str, extra: tuple[tuple[str, re.Pattern], ...] = ()) -> Redacted:
    """`text` with e-mails, IBANs (mod-97-valid), card numbers (Luhn-valid), phone numbers and `extra`
    patterns replaced."""
    counts: dict[str, int] = {}
    if "@" in text:  # the cheap tests skip scans that cannot match (most answers, many inputs)
        text = _replace(EMAIL, "EMAIL", text, counts)
    if _DIGIT.search(text):  # an IBAN, a card and a phone number all hold digits
        text = _replace_ibans(text, counts)  # before cards and phones: an IBAN holds long digit runs
        # A card holds 13 digits or more, a phone number that is replaced 9 or more: fewer digits in
        # all (counted exactly for ASCII text; `\d` also matches other scripts' digits) skip the scans.
        digits = sum(map(text.count, ASCII_DIGITS)) if text.isascii() else CARD_MIN_DIGITS
        if digits >= CARD_MIN_DIGITS:
            text = _replace_cards(text, counts)  # before phones: a card number also looks like digit groups
        if digits >= PHONE_DIGITS[0]:
            text = _replace_phones(text, counts)
    for name, pattern in extra:
        text = _replace(pattern, name, text, counts)
    return Redacted(text, counts)


class Redactor:
    """A task's redaction, compiled once: `redactor(text).text`."""

    def __init__(self, patterns: Mapping[str, str] | None = None) -> None:
        self.extra = compile_patterns(patterns or {})

    def __call__(self, text: str) -> Redacted:
        return redact(text, self.extra)

    def messages(self, messages: list[dict]) -> list[dict]:
        """Chat messages with every text content redacted (what the frontier sees when it may not see PII)."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                m = {**m, "content": self(content).text}
            elif isinstance(content, list):
                m = {**m, "content": [{**p, "text": self(p["text"]).text}
                                      if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                                      for p in content]}
            out.append(m)
        return out
