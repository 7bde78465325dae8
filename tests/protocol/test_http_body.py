"""The HTTPS API's announcement body: strict JSON in, the same TXT codec after it."""

from __future__ import annotations

import json

import pytest

from registration._exceptions import AnnouncementError
from registration.protocol import (
    Announcement,
    decode_announce_body,
    decode_node,
    encode_announce_body,
    encode_node,
    new_token,
)

ANN = Announcement(node_id="nc000001", role="nc", cluster="foo", ip="198.18.0.7", port=2222,
                   fingerprint="SHA256:" + "A" * 43)  # fmt: skip


def test_a_signed_record_survives_the_round_trip_and_still_verifies() -> None:
    token = new_token()
    txt = encode_node(ANN, token=token, now=1_700_000_000)
    props, port = decode_announce_body(encode_announce_body(txt, ANN.port))
    ann = decode_node(props, port)
    assert ann == ANN and ann.signature is not None
    from registration.protocol import verify

    assert verify(ann.signature, token.key, now=1_700_000_000, window=600) is None


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{nope", "json", "not valid JSON"),
        (b"\xff\xfe{}", "json", "not UTF-8"),
        (b"[1, 2]", "json", "want a JSON object"),
        (b'{"port": 22, "port": 23, "txt": {}}', "json", "appears twice"),
        (b'{"port": NaN, "txt": {}}', "json", "NaN is not JSON"),
        (b"[" * 5000 + b"]" * 5000, "json", ""),
        (b'{"port": "22", "txt": {}}', "port", "sshd port as a number"),
        (b'{"port": true, "txt": {}}', "port", "sshd port"),
        (b'{"port": 22, "txt": ["v=1"]}', "txt", "object of strings"),
        (b'{"port": 22, "txt": {"v": 1}}', "txt", "is int, not a string"),
        (b'{"port": 22, "txt": {"a": {"b": "c"}}}', "txt", "is dict"),
    ],
)
def test_malformed_bodies_are_refused_naming_what_is_wrong(
    body: bytes, field: str, words: str
) -> None:
    with pytest.raises(AnnouncementError) as caught:
        decode_announce_body(body)
    assert caught.value.field == field
    assert words in caught.value.reason


def test_too_many_keys_and_the_codec_limits_apply_as_over_mdns() -> None:
    many = {f"k{i}": "x" for i in range(65)}
    with pytest.raises(AnnouncementError, match="more than 64 keys"):
        decode_announce_body(json.dumps({"port": 22, "txt": many}).encode())
    txt = dict(encode_node(ANN), name="n" * 300)
    props, port = decode_announce_body(encode_announce_body(txt, 22))
    with pytest.raises(AnnouncementError, match="exceeds 255"):
        decode_node(props, port)
    props, port = decode_announce_body(encode_announce_body({**encode_node(ANN), "v": "2"}, 22))
    with pytest.raises(AnnouncementError, match="unsupported protocol version"):
        decode_node(props, port)


def test_escapes_that_decode_to_control_characters_or_lone_surrogates_are_rejected() -> None:
    for value in ("\\u001b[2J", "\\ud800", "a\\u202eb"):
        body = ('{"port": 22, "txt": {"v": "1", "name": "' + value + '"}}').encode()
        props, port = decode_announce_body(body)
        with pytest.raises(AnnouncementError):
            decode_node({**encode_node(ANN), **props}, port)


def test_a_null_value_is_a_boolean_attribute_as_in_a_txt_record() -> None:
    props, port = decode_announce_body(
        encode_announce_body({**encode_node(ANN)}, 22).replace(b'"state":"ready"', b'"state":null')
    )
    assert props["state"] is None
    with pytest.raises(AnnouncementError, match="present without a value"):
        decode_node(props, port)
