"""Redaction, property-based: a generator per PII form (hypothesis) plants a value in ordinary
text, and the value must be gone and its placeholder there. A gap found becomes a generator here."""
from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.redaction import iban_ok, luhn_ok, redact

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^`{|}~-_"

words = st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), max_size=4).map(" ".join)
label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domain = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(label, min_size=1, max_size=3),
                   st.from_regex(r"[a-z]{2,6}", fullmatch=True))
dot_atom = st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=10), min_size=1, max_size=3).map(".".join)
quoted = st.text(alphabet=[c for c in string.printable if c not in '"\\\r\n\t\x0b\x0c'], min_size=1,
                 max_size=30).map(lambda s: f'"{s}"')
ipv4 = st.ip_addresses(v=4).map(lambda ip: f"[{ip}]")
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip.compressed}]")

EMAILS = {
    "dot-atom": st.builds(lambda local, d: f"{local}@{d}", dot_atom, domain),
    "quoted local part": st.builds(lambda local, d: f"{local}@{d}", quoted, domain),
    "IPv4 literal": st.builds(lambda local, d: f"{local}@{d}", dot_atom, ipv4),
    "IPv6 literal": st.builds(lambda local, d: f"{local}@{d}", dot_atom, ipv6),
}


def with_check_digit(body: str, check) -> str:
    return next(body + d for d in string.digits if check(body + d))


def iban_of(country: str, bban: str, grouped: bool) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    assert iban_ok(compact)
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)) if grouped else compact


ibans = st.builds(iban_of, st.from_regex(r"[A-Z]{2}", fullmatch=True), st.from_regex(r"[A-Z0-9]{11,30}", fullmatch=True),
                  st.booleans())
def card_of(body: str, sep: str) -> str:
    number = with_check_digit(body, luhn_ok)
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4)) if sep else number


cards = st.builds(card_of, st.from_regex(r"[1-9][0-9]{11,17}", fullmatch=True), st.sampled_from(["", " ", "-"]))
phones = st.builds(lambda cc, groups: f"+{cc} " + " ".join(groups), st.integers(1, 999).map(str),
                   st.lists(st.from_regex(r"[0-9]{2,4}", fullmatch=True), min_size=2, max_size=4)
                   ).filter(lambda p: 9 <= sum(c.isdigit() for c in p) <= 15)


def planted(before: str, value: str, after: str) -> str:
    return " ".join(part for part in (before, value, after) if part)


def assert_gone(value: str, text: str, placeholders: tuple[str, ...]) -> None:
    out = redact(text)
    assert value not in out.text, (text, out.text)
    assert any(p in out.text for p in placeholders), (text, out.text)


@SETTINGS
@given(st.sampled_from(sorted(EMAILS)).flatmap(lambda form: EMAILS[form]), words, words)
def test_every_email_form_is_redacted(email, before, after):
    assert_gone(email, planted(before, email, after), ("<EMAIL>",))


@SETTINGS
@given(ibans, words, words)
def test_ibans_are_redacted(iban, before, after):
    assert_gone(iban, planted(before, iban, after), ("<IBAN>",))


@SETTINGS
@given(cards, words, words)
def test_card_numbers_are_redacted(card, before, after):
    assert_gone(card, planted(before, card, after), ("<CARD>",))


@SETTINGS
@given(phones, words, words)
def test_phone_numbers_are_redacted(phone, before, after):
    assert_gone(phone, planted(before, phone, after), ("<PHONE>", "<CARD>"))


@SETTINGS
@given(words)
def test_words_alone_are_kept(text):
    assert redact(text).text == text


def redact_without_shortcuts(text: str):
    """`redact` as it was before the digit-count shortcuts (every scan always runs): the reference."""
    from services.common import redaction as r

    counts: dict[str, int] = {}
    if "@" in text:
        text = r._replace(r.EMAIL, "EMAIL", text, counts)
    if r._DIGIT.search(text):
        text = r._replace_cards(r._replace_ibans(text, counts), counts)
        text = r._replace_phones(text, counts)
    return text, counts


digit_runs = st.lists(st.one_of(st.text(alphabet=string.digits + " -+().", min_size=1, max_size=22), words,
                                st.sampled_from(["4111 1111 1111 1111", "+44 20 7946 0958", "DE89 3704 0044 0532 0130 00",
                                                 "2026-12-05", "\u0664\u0661\u0661\u0661 1111 1111 1111"])),
                      max_size=6).map(" ".join)


@SETTINGS
@given(digit_runs)
def test_the_digit_count_shortcuts_change_nothing(text):
    found = redact(text)
    assert (found.text, found.counts) == redact_without_shortcuts(text)
