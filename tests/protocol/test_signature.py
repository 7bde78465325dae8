"""Signed announcements (registration/protocol/_signature.py): tokens, TXT keys, HMAC."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from registration._exceptions import AnnouncementError
from registration.protocol import (
    SIGNATURE_WINDOW,
    Announcement,
    decode_node,
    encode_node,
    new_token,
    parse_token,
    token_key,
    verify,
)
from registration.protocol._txt import MAX_TXT_STRING, MAX_TXT_TOTAL

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
NOW = 1_800_000_000.0
TOKEN = new_token()


def ann(**changes: object) -> Announcement:
    base = Announcement(
        node_id="nc-00001", role="nc", cluster="foo", ip="198.18.0.5", port=22, fingerprint=FP,
        name="nc1",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def wire(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_a_token_is_an_id_and_a_secret_of_at_least_128_bits() -> None:
    token = new_token()
    assert len(token.secret) * 6 >= 128
    assert parse_token(f"  {token}\n") == token
    assert token.secret not in repr(token)
    for bad in ("", "nodot", "UPPER.secretsecretsecretsecret", "ab.short", f"{token}.x"):
        with pytest.raises(AnnouncementError, match=r"ID\.SECRET"):
            parse_token(bad)


def test_a_signed_record_verifies_and_carries_its_token() -> None:
    txt = encode_node(ann(), token=TOKEN, now=NOW)
    assert list(txt)[-3:] == ["tid", "ts", "sig"] and txt["tid"] == TOKEN.token_id
    decoded = decode_node(wire(txt), 22)
    claim = decoded.signature
    assert claim is not None and claim.token_id == TOKEN.token_id and claim.timestamp == NOW
    assert verify(claim, TOKEN.key, now=NOW + 30, window=SIGNATURE_WINDOW) is None
    assert decoded == ann()  # the signature is not part of the node's identity


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ip", "198.18.0.66"),
        ("fp", "SHA256:" + "A" * 43),
        ("role", "cc"),
        ("cluster", "bar"),
        ("id", "nc-00002"),
        ("state", "registered"),
        ("name", "other"),
        ("ts", str(int(NOW) + 1)),
        ("tid", "zzzzzzzzzz"),
    ],
)
def test_every_signed_field_is_bound(key: str, value: str) -> None:
    txt = encode_node(ann(), token=TOKEN, now=NOW)
    txt[key] = value
    claim = decode_node(wire(txt), 22).signature
    assert claim is not None
    why = verify(claim, TOKEN.key, now=NOW, window=SIGNATURE_WINDOW)
    assert why is not None and "does not match" in why


def test_the_port_and_any_extra_key_are_bound_too() -> None:
    txt = encode_node(ann(), token=TOKEN, now=NOW)
    other_port = decode_node(wire(txt), 2222).signature
    assert other_port is not None
    assert verify(other_port, TOKEN.key, now=NOW, window=SIGNATURE_WINDOW) is not None
    txt["future"] = "x"  # an unknown key, added after signing
    extra = decode_node(wire(txt), 22).signature
    assert extra is not None and verify(extra, TOKEN.key, now=NOW, window=SIGNATURE_WINDOW)


def test_another_tokens_key_does_not_verify() -> None:
    claim = decode_node(wire(encode_node(ann(), token=TOKEN, now=NOW)), 22).signature
    assert claim is not None
    other = new_token()
    assert verify(claim, other.key, now=NOW, window=SIGNATURE_WINDOW) is not None
    assert token_key(TOKEN.token_id, TOKEN.secret) == TOKEN.key


@pytest.mark.parametrize(("skew", "ok"), [(-599, True), (599, True), (-601, False), (601, False)])
def test_the_timestamp_window(skew: float, ok: bool) -> None:
    claim = decode_node(wire(encode_node(ann(), token=TOKEN, now=NOW)), 22).signature
    assert claim is not None
    why = verify(claim, TOKEN.key, now=NOW - skew, window=600)
    assert (why is None) is ok
    if not ok:
        assert "a replay, or a clock to fix" in (why or "")


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"tid": "abcdef1234", "ts": "1"}, "sig"),
        ({"sig": "A" * 22}, "tid"),
        ({"tid": "AB", "ts": "1", "sig": "A" * 22}, "tid"),
        ({"tid": "abcdef1234", "ts": "-5", "sig": "A" * 22}, "ts"),
        ({"tid": "abcdef1234", "ts": "1", "sig": "A" * 21}, "sig"),
        ({"tid": "abcdef1234", "ts": "1", "sig": "A" * 21 + "="}, "sig"),
    ],
)
def test_malformed_signature_keys_are_rejected(keys: dict[str, str], field: str) -> None:
    txt = {**encode_node(ann()), **keys}
    with pytest.raises(AnnouncementError) as info:
        decode_node(wire(txt), 22)
    assert info.value.field == field


def test_a_maximal_signed_record_stays_inside_rfc_6763_limits() -> None:
    big = ann(
        node_id="n" * 40,
        cluster="c" * 63,
        name="h" * 63,
        ip="2001:db8:1234:5678:9abc:def0:1234:5678",
        key_type="ecdsa-sha2-nistp521",
        state="registered",
    )
    txt = encode_node(big, token=TOKEN, now=time.time())
    sizes = [len(k) + 1 + len(v.encode()) for k, v in txt.items()]
    total = sum(s + 1 for s in sizes)
    assert max(sizes) <= MAX_TXT_STRING
    assert total <= MAX_TXT_TOTAL / 2, total  # well inside: room for the rest of the packet
    assert decode_node(wire(txt), 22).signature is not None


_sig_values = st.one_of(
    st.text(max_size=30), st.from_regex(r"[A-Za-z0-9_-]{20,24}", fullmatch=True)
)


@settings(max_examples=300, deadline=None)
@given(tid=st.text(max_size=20), ts=st.text(max_size=14), sig=_sig_values)
@example(tid="abcdef1234", ts="1" * 13, sig="A" * 22)
@example(tid="abcdef\u212a34", ts="1", sig="A" * 22)
@example(tid="abcdef1234", ts="\uff11", sig="A" * 22)  # a non-ASCII digit
def test_fuzzed_signature_fields_never_escape_as_anything_but_announcement_error(
    tid: str, ts: str, sig: str
) -> None:
    txt = {**encode_node(ann()), "tid": tid, "ts": ts, "sig": sig}
    try:
        decoded = decode_node(wire(txt), 22)
    except AnnouncementError:
        return
    claim = decoded.signature
    assert claim is not None
    assert claim.token_id.isascii() and claim.token_id.isalnum()
    assert 0 <= claim.timestamp < 10**12
    assert len(claim.signature) == 16
    assert verify(claim, TOKEN.key, now=NOW, window=SIGNATURE_WINDOW) is not None
