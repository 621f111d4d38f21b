"""Redaction on a planted set: every email, phone and card number goes; ordinary text stays."""
from __future__ import annotations

import pytest

from services.common.redaction import Redactor, compile_patterns, luhn_ok, redact

PLANTED = {
    "EMAIL": ["jane.doe@example.com", "a.b+bank@mail.co.uk", "X_Y-z@sub.domain.org", "x.y@[127.0.0.1]",
              "ops@[IPv6:2001:db8::1]", '"john doe"@example.com', '"a@b"@example.org', "o'brien@example.ie"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606",
             "NL91-ABNA-0417-1643-00"],
    "PHONE": ["+44 7700 900123", "(555) 123-4567", "555-123-4567", "07700900123", "+1-202-555-0143",
              "+49 30 1234567"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"],
}
KEEP = ["I paid 100 pounds on 2024-01-15", "my pin 1234 was blocked", "transfer of 1,500.00 EUR",
        "card ending 4242", "ref 12345678", "version 2.3.4", "4111 1111 1111 1112",  # fails Luhn
        "DE89 3704 0044 0532 0130 01 is not an IBAN", "meet @ noon", "see @example on the forum"]


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in PLANTED.items() for v in vs])
def test_planted_values_are_replaced(kind, value):
    text = f"hi, reach me on {value} please."
    out = redact(text)
    assert value not in out.text
    assert f"<{kind}>" in out.text, out.text
    assert out.counts == {kind: 1}


@pytest.mark.parametrize("text", KEEP)
def test_ordinary_text_is_kept(text):
    assert redact(text).text == text
    assert not redact(text).changed


def test_several_kinds_in_one_message():
    text = "I'm jane@example.com, card 4111-1111-1111-1111, call +44 7700 900123"
    out = redact(text)
    assert out.text == "I'm <EMAIL>, card <CARD>, call <PHONE>"
    assert out.counts == {"EMAIL": 1, "CARD": 1, "PHONE": 1}


def test_configured_patterns_get_their_own_placeholder():
    r = Redactor({"iban": r"\bGB\d{2}[A-Z]{4}\d{14}\b", "account": r"\bACC-\d{6}\b"})
    out = r("pay GB29NWBK60161331926819 from ACC-123456")
    assert out.text == "pay <IBAN> from <ACCOUNT>"


def test_bad_patterns_are_refused_with_their_name():
    with pytest.raises(ValueError, match="broken"):
        compile_patterns({"broken": "("})
    with pytest.raises(ValueError, match="name"):
        compile_patterns({"no spaces": "x"})


def test_luhn():
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


def test_chat_messages_are_redacted_in_place_of_their_text():
    r = Redactor()
    msgs = [{"role": "system", "content": "classify"},
            {"role": "user", "content": [{"type": "text", "text": "mail me: x@y.io"}, {"type": "image_url"}]},
            {"role": "user", "content": "card 4111111111111111"}]
    out = r.messages(msgs)
    assert out[1]["content"][0]["text"] == "mail me: <EMAIL>"
    assert out[1]["content"][1] == {"type": "image_url"}
    assert out[2]["content"] == "card <CARD>"
    assert msgs[2]["content"] == "card 4111111111111111"  # the caller's request is not changed
