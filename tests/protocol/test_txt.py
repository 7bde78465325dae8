"""The strict TXT-record codec of protocol v1 (registration/protocol/_txt.py).

Every malformed record must be rejected with an AnnouncementError naming the
offending field, and nothing a peer can put on the wire may raise anything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registration._exceptions import AnnouncementError
from registration.protocol import (
    PROTOCOL_VERSION,
    Announcement,
    RegistrarAnnouncement,
    decode_node,
    decode_registrar,
    encode_node,
    encode_registrar,
    instance_name,
)

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
OTHER_FP = "SHA256:" + "A" * 43

RawTxt = dict[bytes, bytes | None]


def raw(**overrides: str | None) -> RawTxt:
    """A valid node TXT record as python-zeroconf delivers it (bytes), with overrides.

    An override of None means "key present without a value"; use drop() to remove a key.
    """
    txt: dict[str, str | None] = {
        "v": "1",
        "role": "nc",
        "id": "n1abc",
        "ip": "198.18.0.5",
        "fp": FP,
        "state": "ready",
        "cluster": "foo",
    }
    txt.update(overrides)
    return {k.encode(): (None if v is None else v.encode()) for k, v in txt.items()}


def drop(txt: RawTxt, key: str) -> RawTxt:
    return {k: v for k, v in txt.items() if k != key.encode()}


AnyTxt = Mapping[bytes, bytes | None] | Mapping[str, str | None]


def rejected(txt: AnyTxt, port: int = 22) -> AnnouncementError:
    with pytest.raises(AnnouncementError) as info:
        decode_node(txt, port)
    return info.value


# -- round trip ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ann",
    [
        Announcement(node_id="n1abc", role="nc", ip="198.18.0.5", port=22, fingerprint=FP),
        Announcement(
            node_id="3f2a9c0d41b7e655",
            role="cc",
            ip="2001:db8::5",
            port=2222,
            fingerprint=FP,
            state="registered",
            cluster="foo.bar_1",
            name="cc1.example",
            key_type="ecdsa-sha2-nistp256",
        ),
        Announcement(
            node_id="walrus_01", role="walrus", ip="10.0.0.1", port=65535, fingerprint=OTHER_FP
        ),
    ],
)
def test_encode_decode_round_trip(ann: Announcement) -> None:
    txt = encode_node(ann)
    assert txt["v"] == PROTOCOL_VERSION
    wire = {k.encode(): v.encode() for k, v in txt.items()}
    assert decode_node(wire, ann.port) == ann
    # python-zeroconf may also hand over str mappings
    assert decode_node(dict(txt), ann.port) == ann


def test_encode_node_omits_defaults_and_absent_optionals() -> None:
    ann = Announcement(node_id="n1abc", role="walrus", ip="10.0.0.1", port=22, fingerprint=FP)
    assert encode_node(ann) == {
        "v": "1",
        "role": "walrus",
        "id": "n1abc",
        "ip": "10.0.0.1",
        "fp": FP,
        "state": "ready",
    }
    with_kt = Announcement(
        node_id="n1abc", role="nc", ip="10.0.0.1", port=22, fingerprint=FP, key_type="ssh-rsa"
    )
    assert encode_node(with_kt)["kt"] == "ssh-rsa"


def test_decoded_defaults() -> None:
    ann = decode_node(drop(raw(), "cluster"), 22)
    assert ann.cluster is None
    assert ann.name is None
    assert ann.key_type == "ssh-ed25519"
    assert ann.display_name == "n1abc"
    assert decode_node(raw(name="node1"), 22).display_name == "node1"


def test_registrar_round_trip_and_states() -> None:
    ann = RegistrarAnnouncement(
        node_id="7d01e2b9a4c3f815",
        role="cc",
        ip="198.18.0.2",
        port=22,
        state="standby",
        cluster="foo",
        name="cc1",
    )
    assert decode_registrar(encode_registrar(ann), 22) == ann
    txt = encode_registrar(ann)
    txt["state"] = "ready"  # a node state is not a registrar state
    with pytest.raises(AnnouncementError) as info:
        decode_registrar(txt, 22)
    assert info.value.field == "state"


def test_instance_name_embeds_role_and_id() -> None:
    assert instance_name("nc", "n1abc") == "nc-n1abc"


# -- version -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2", "0", "1.0", "v1", " 1"])
def test_unknown_version_rejected(version: str) -> None:
    assert rejected(raw(v=version)).field == "v"


def test_missing_version_rejected() -> None:
    err = rejected(drop(raw(), "v"))
    assert err.field == "v"
    assert err.reason == "missing"


# -- required keys -------------------------------------------------------------


@pytest.mark.parametrize("key", ["id", "role", "ip", "fp", "state"])
def test_missing_required_key_rejected(key: str) -> None:
    err = rejected(drop(raw(), key))
    assert err.field == key
    assert err.reason == "missing"


@pytest.mark.parametrize("key", ["id", "role", "ip", "fp", "state"])
def test_empty_required_key_rejected(key: str) -> None:
    assert rejected(raw(**{key: ""})).field == key


@pytest.mark.parametrize("key", ["v", "id", "role", "ip", "fp", "state", "cluster", "name", "kt"])
def test_known_key_without_value_rejected(key: str) -> None:
    err = rejected(raw(**{key: None}))
    assert err.field == key
    assert "without a value" in err.reason


def test_unknown_keys_ignored_even_without_value() -> None:
    txt = raw()
    txt[b"future"] = b"something"
    txt[b"flag"] = None
    ann = decode_node(txt, 22)
    assert ann.node_id == "n1abc"
    assert ann.role == "nc"


# -- key handling ----------------------------------------------------------------


def test_keys_are_case_insensitive() -> None:
    txt = {k.upper(): v for k, v in raw().items()}
    ann = decode_node(txt, 22)
    assert (ann.role, ann.node_id, ann.cluster) == ("nc", "n1abc", "foo")
    assert decode_node({"ROLE": "cc", **{k: v for k, v in drop(raw(), "role").items()}}, 22)


def test_first_occurrence_of_a_duplicate_key_wins() -> None:
    txt = drop(raw(), "role")
    txt = {b"role": b"nc", **txt, b"ROLE": b"cc", b"Role": b"sc"}
    assert decode_node(txt, 22).role == "nc"
    rest = {k.decode(): (v or b"").decode() for k, v in drop(raw(), "cluster").items()}
    str_txt = {"Cluster": "first", "cluster": "second", **rest}
    assert decode_node(str_txt, 22).cluster == "first"


@pytest.mark.parametrize("key", [b"", b"a=b", b"k\x01", "r\u00f4le".encode()])
def test_bad_keys_rejected(key: bytes) -> None:
    txt = raw()
    txt[key] = b"x"
    rejected(txt)


def test_non_utf8_key_rejected() -> None:
    txt = raw()
    txt[b"\xff\xfe"] = b"x"
    assert rejected(txt).field == "key"


# -- sizes -----------------------------------------------------------------------------


def test_string_over_255_bytes_rejected() -> None:
    # "name=" (5 bytes) + 251 bytes = 256 > 255
    err = rejected(raw(name="a" * 251))
    assert err.field == "name"
    assert "255" in err.reason


def test_string_of_exactly_255_bytes_is_not_a_size_error() -> None:
    txt = raw()
    txt[b"xx"] = b"a" * 252  # "xx=" + 252 = 255 bytes: allowed, and the key is unknown
    assert decode_node(txt, 22).node_id == "n1abc"


def test_oversized_unknown_key_is_still_rejected() -> None:
    txt = raw()
    txt[b"future"] = b"a" * 300
    assert rejected(txt).field == "future"


def test_record_over_1300_bytes_rejected() -> None:
    txt = raw()
    for i in range(6):
        txt[f"x{i}".encode()] = b"a" * 240  # each string is fine (243 bytes), the whole is not
    err = rejected(txt)
    assert err.field is None
    assert "1300" in err.reason


# -- encoding and control characters --------------------------------------------------------


@pytest.mark.parametrize("key", ["name", "cluster", "role", "ip"])
def test_non_utf8_value_rejected(key: str) -> None:
    txt = raw()
    txt[key.encode()] = b"ab\xc3\x28"
    err = rejected(txt)
    assert err.field == key
    assert "UTF-8" in err.reason


@pytest.mark.parametrize("value", ["node\x00", "no\nde", "node\x1b[2J", "node\x7f", "a\u2028b"])
def test_control_characters_rejected(value: str) -> None:
    err = rejected(raw(name=value))
    assert err.field == "name"
    assert "control" in err.reason


def test_control_characters_in_unknown_value_rejected() -> None:
    txt = raw()
    txt[b"future"] = b"\x07bell"
    assert rejected(txt).field == "future"


# -- per-field patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "198.18.0",
        "not-an-ip",
        "198.18.0.256",
        "1.2.3.4/24",
        "224.0.0.251",
        "ff02::fb",
        "0.0.0.0",
        "::",
    ],
)
def test_bad_ip_rejected(ip: str) -> None:
    assert rejected(raw(ip=ip)).field == "ip"


@pytest.mark.parametrize("ip", ["198.18.0.5", "10.1.2.3", "2001:db8::1", "fe80::1"])
def test_good_ip_accepted(ip: str) -> None:
    assert decode_node(raw(ip=ip), 22).ip == ip


@pytest.mark.parametrize(
    "fp",
    [
        "MD5:" + "A" * 43,
        "sha256:" + "A" * 43,
        "SHA256:" + "A" * 42,
        "SHA256:" + "A" * 44,
        "SHA256:" + "A" * 42 + "=",
        "SHA256:" + "A" * 42 + "-",
        "uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    ],
)
def test_bad_fingerprint_rejected(fp: str) -> None:
    assert rejected(raw(fp=fp)).field == "fp"


@pytest.mark.parametrize("role", ["NC", "1nc", "-nc", "n_c", "a" * 17, "n c"])
def test_bad_role_rejected(role: str) -> None:
    assert rejected(raw(role=role)).field == "role"


@pytest.mark.parametrize("cluster", ["-foo", ".foo", "foo bar", "foo/bar", "f" * 64, ""])
def test_bad_cluster_rejected(cluster: str) -> None:
    assert rejected(raw(cluster=cluster)).field == "cluster"


@pytest.mark.parametrize("node_id", ["abc", "-abcd", "_abcd", "ab.cd", "ab cd", "n\u00e9ud"])
def test_bad_id_rejected(node_id: str) -> None:
    assert rejected(raw(id=node_id)).field == "id"


@pytest.mark.parametrize("name", ["-node", "node_1", "n" * 64])
def test_bad_name_rejected(name: str) -> None:
    assert rejected(raw(name=name)).field == "name"


@pytest.mark.parametrize("kt", ["ssh-dss", "ed25519", "ecdsa-sha2-nistp224"])
def test_bad_key_type_rejected(kt: str) -> None:
    assert rejected(raw(kt=kt)).field == "kt"


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_bad_port_rejected(port: int) -> None:
    assert rejected(raw(), port=port).field == "port"


@pytest.mark.parametrize("port", [1, 22, 65535])
def test_good_port_accepted(port: int) -> None:
    assert decode_node(raw(), port).port == port


@pytest.mark.parametrize("state", ["active", "READY", "done", "registering"])
def test_bad_state_rejected(state: str) -> None:
    assert rejected(raw(state=state)).field == "state"


@pytest.mark.parametrize("state", ["ready", "registered"])
def test_node_states_accepted(state: str) -> None:
    assert decode_node(raw(state=state), 22).state == state


def test_announcement_validates_on_construction() -> None:
    with pytest.raises(AnnouncementError) as info:
        Announcement(node_id="n1abc", role="nc", ip="10.0.0.1", port=22, fingerprint="SHA256:x")
    assert info.value.field == "fp"


# -- known bugs --------------------------------------------------------------


def test_id_length_limit_keeps_dns_labels_within_63_bytes() -> None:
    longest = "a" * 40
    ann = decode_node(raw(id=longest, role="a" * 16), 22)
    assert len(instance_name(ann.role, ann.node_id)) <= 63
    assert len(f"autoreg-{ann.node_id}") <= 63
    assert rejected(raw(id="a" * 41)).field == "id"


@pytest.mark.parametrize("ip", ["fe80::1%a b", "fe80::1%$(reboot)", "fe80::1%`id`"])
def test_ipv6_zone_with_junk_rejected(ip: str) -> None:
    assert rejected(raw(ip=ip)).field == "ip"


# -- robustness: nothing but AnnouncementError, whatever arrives --------------------

_KNOWN = [b"v", b"id", b"role", b"ip", b"fp", b"state", b"cluster", b"name", b"kt", b"ROLE", b"Id"]
_keys = st.one_of(st.sampled_from(_KNOWN), st.binary(max_size=12))
_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=70).map(str.encode),
    st.sampled_from(
        [b"1", b"ready", b"registered", b"nc", b"n1abc", b"198.18.0.5", b"fe80::1%x", FP.encode()]
    ),
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.dictionaries(_keys, _values, max_size=14), st.integers(min_value=-5, max_value=70000))
def test_decode_node_only_raises_announcement_error(txt: RawTxt, port: int) -> None:
    try:
        ann = decode_node(txt, port)
    except AnnouncementError as exc:
        assert str(exc)
    else:
        assert isinstance(ann, Announcement)
        # whatever was accepted encodes back to the same announcement
        wire = {k.encode(): v.encode() for k, v in encode_node(ann).items()}
        assert decode_node(wire, port) == ann


@settings(max_examples=200, deadline=None, database=None)
@given(st.dictionaries(_keys, _values, max_size=10))
def test_decode_registrar_only_raises_announcement_error(txt: RawTxt) -> None:
    with contextlib.suppress(AnnouncementError):
        decode_registrar(txt, 22)
