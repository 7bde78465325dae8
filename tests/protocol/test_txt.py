"""The strict TXT-record codec of protocol v1 (registration/protocol/_txt.py).

Every malformed record must be rejected with an AnnouncementError naming the
offending field, and nothing a peer can put on the wire may raise anything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registration._exceptions import AnnouncementError
from registration.protocol import (
    KEY_TYPES,
    PROTOCOL_VERSION,
    Announcement,
    RegistrarAnnouncement,
    check_cluster,
    check_fingerprint,
    check_ip,
    check_key_type,
    check_name,
    check_node_id,
    check_port,
    check_role,
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


# -- hostile input found by fuzzing (each one a regression example below too) --------

KELVIN_KT = "\u212at"  # KELVIN SIGN + "t": lower-cases to the ASCII key "kt"


@pytest.mark.parametrize("key", [KELVIN_KT.encode(), "\u212aT".encode()])
def test_non_ascii_key_is_rejected_before_case_folding(key: bytes) -> None:
    txt = raw()
    txt[key] = b"ssh-rsa"
    err = rejected(txt)
    assert err.field == "key"
    assert "ASCII" in err.reason
    # the same key handed over as a str mapping
    str_txt = {k.decode(): (v or b"").decode() for k, v in raw().items()}
    with pytest.raises(AnnouncementError):
        decode_node({**str_txt, key.decode(): "ssh-rsa"}, 22)


def test_keys_without_value_count_against_the_record_limit() -> None:
    txt = raw()
    for i in range(2000):
        txt[f"x{i}".encode()] = None
    err = rejected(txt)
    assert err.field is None
    assert "1300" in err.reason


def test_key_without_value_counts_against_the_string_limit() -> None:
    txt = raw()
    txt[b"k" * 300] = None
    err = rejected(txt)
    assert "255" in err.reason
    assert err.field is not None and len(err.field) < 50  # the field is shortened
    txt = raw()
    txt[b"k" * 255] = None  # exactly 255 bytes: fine
    assert decode_node(txt, 22).node_id == "n1abc"


def test_boolean_keys_within_the_limits_are_still_ignored() -> None:
    txt = raw()
    for i in range(20):
        txt[f"flag{i}".encode()] = None
    assert decode_node(txt, 22).node_id == "n1abc"


@pytest.mark.parametrize(
    "ip",
    [
        "::ffff:0.0.0.0",
        "::ffff:0:0",
        "::ffff:224.0.0.251",
        "::ffff:e000:fb",
        "::ffff:239.255.255.250",
        "0:0:0:0:0:ffff:e000:00fb",
    ],
)
def test_ipv4_mapped_multicast_and_unspecified_rejected(ip: str) -> None:
    err = rejected(raw(ip=ip))
    assert err.field == "ip"
    assert "unicast" in err.reason


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8:0:0:0:0:0:5", "2001:db8::5"),
        ("2001:0db8::0005", "2001:db8::5"),
        ("FE80::1", "fe80::1"),
        ("::ffff:198.18.0.5", str(ipaddress.ip_address("::ffff:198.18.0.5"))),
        ("198.18.0.5", "198.18.0.5"),
    ],
)
def test_addresses_are_normalised(written: str, normalised: str) -> None:
    ann = decode_node(raw(ip=written), 22)
    assert ann.ip == normalised
    assert encode_node(ann)["ip"] == normalised
    reg = decode_registrar(raw(ip=written, state="active"), 22)
    assert reg.ip == normalised
    # built directly, the same: an Announcement never carries an unnormalised address
    direct = Announcement(node_id="n1abc", role="nc", ip=written, port=22, fingerprint=FP)
    assert direct.ip == normalised
    assert direct == ann.__class__(
        node_id="n1abc", role="nc", ip=normalised, port=22, fingerprint=FP
    )
    assert RegistrarAnnouncement(node_id="n1abc", role="cc", ip=written, port=22).ip == normalised


# -- field validators ---------------------------------------------------------------------


def test_validators_return_valid_values() -> None:
    assert check_node_id("n1abc") == "n1abc"
    assert check_role("walrus") == "walrus"
    assert check_cluster("foo.bar_1") == "foo.bar_1"
    assert check_name("cc1.example") == "cc1.example"
    assert check_fingerprint(FP) == FP
    for key_type in KEY_TYPES:
        assert check_key_type(key_type) == key_type
    assert check_ip("2001:DB8::1") == "2001:db8::1"
    assert check_port(22) == 22


@pytest.mark.parametrize(
    ("check", "value", "field", "rule"),
    [
        (check_node_id, "sc1", "id", "4-40 characters of A-Z a-z 0-9 _ -, starting with a letter"),
        (check_node_id, "a\nb" * 3, "id", "4-40 characters"),
        (check_role, "NC", "role", "1-16 characters of a-z 0-9 -, starting with a lower-case"),
        (check_cluster, "-foo", "cluster", "1-63 characters of A-Z a-z 0-9 _ . -"),
        (check_name, "node_1", "name", "1-63 characters of A-Z a-z 0-9 . -"),
        (check_fingerprint, "SHA256:short", "fp", "SHA256: followed by 43 unpadded base64"),
        (check_key_type, "ssh-dss", "kt", "one of ssh-ed25519, ecdsa-sha2-nistp256"),
        (check_ip, "198.18.0", "ip", "IPv4 or IPv6 address literal"),
        (check_ip, "fe80::1%eth0", "ip", "without a zone"),
        (check_ip, "224.0.0.251", "ip", "unicast"),
        (check_ip, None, "ip", "IP address"),
        (check_port, 0, "port", "1-65535"),
        (check_port, True, "port", "1-65535"),
    ],
)
def test_validators_state_the_rule(
    check: Callable[[object], object], value: object, field: str, rule: str
) -> None:
    with pytest.raises(AnnouncementError) as info:
        check(value)
    assert info.value.field == field
    assert rule in info.value.reason
    assert str(info.value).startswith(f"{field}: ")
    assert "\n" not in str(info.value)  # the value is quoted with its escapes


def test_construction_error_states_the_rule() -> None:
    with pytest.raises(AnnouncementError) as info:
        Announcement(node_id="sc1", role="sc", ip="10.0.0.1", port=22, fingerprint=FP)
    assert str(info.value) == (
        "id: invalid value 'sc1': must be 4-40 characters of A-Z a-z 0-9 _ -, "
        "starting with a letter or digit"
    )
    with pytest.raises(AnnouncementError) as info:
        RegistrarAnnouncement(node_id="n1abc", role="cc", ip="10.0.0.1", port=22, state="ready")  # type: ignore[arg-type]
    assert "active, locked, standby" in info.value.reason


# -- robustness: nothing but AnnouncementError, whatever arrives --------------------

_KNOWN = [b"v", b"id", b"role", b"ip", b"fp", b"state", b"cluster", b"name", b"kt", b"ROLE", b"Id"]
_keys = st.one_of(
    st.sampled_from([*_KNOWN, KELVIN_KT.encode(), "\u0130d".encode(), b"IP", b"Kt"]),
    st.binary(max_size=12),
    st.text(max_size=12).map(str.encode),
    st.integers(min_value=250, max_value=300).map(lambda n: b"k" * n),
)
_ips = st.one_of(
    st.ip_addresses().map(lambda a: str(a).encode()),
    st.ip_addresses(v=6).map(lambda a: a.exploded.upper().encode()),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}".encode()),
    st.sampled_from(
        [b"::ffff:0.0.0.0", b"::ffff:224.0.0.251", b"0:0:0:0:0:0:0:1", b"fe80::1%x", b"::"]
    ),
)
_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=70).map(str.encode),
    st.sampled_from(
        [b"1", b"ready", b"registered", b"active", b"nc", b"n1abc", b"198.18.0.5", FP.encode()]
    ),
    _ips,
)
_extras = st.dictionaries(_keys, _values, max_size=8)
# n boolean attributes (keys without '='), cheap to generate in bulk
_flags = st.integers(min_value=0, max_value=400).map(
    lambda n: {f"b{i}".encode(): None for i in range(n)}
)


def _records(base: RawTxt) -> st.SearchStrategy[RawTxt]:
    """Random records, and mostly valid ones with random changes (so some are accepted)."""
    return st.one_of(
        st.dictionaries(_keys, _values, max_size=14),
        st.builds(lambda extra: {**base, **extra}, _extras),
        st.builds(lambda ip, extra: {**base, b"ip": ip, **extra}, _ips, _extras),
        st.builds(lambda flags, extra: {**base, **flags, **extra}, _flags, _extras),
    )


def _with(**keys: bytes | None) -> RawTxt:
    return {**raw(), **{k.encode(): v for k, v in keys.items()}}


def _bulk_flags(count: int, size: int = 4) -> RawTxt:
    return {**raw(), **{f"x{i:0{size - 1}}".encode(): None for i in range(count)}}


_REGRESSIONS: list[RawTxt] = [
    {**raw(), KELVIN_KT.encode(): b"ssh-rsa"},  # non-ASCII key folded to "kt"
    {**drop(raw(), "id"), "\u0130d".encode(): b"n1abc"},  # dotted capital I folds to "i̇d"
    _bulk_flags(2000),  # boolean keys skipped the total limit
    {**raw(), b"k" * 300: None},  # ... and the per-string limit
    raw(ip="::ffff:0.0.0.0"),  # IPv4-mapped unspecified
    raw(ip="::ffff:224.0.0.251"),  # IPv4-mapped multicast
    raw(ip="0:0:0:0:0:0:0:1"),  # accepted, but must come out as ::1
]


def _string_sizes(txt: Mapping[bytes, bytes | None]) -> list[int]:
    return [len(k) + (0 if v is None else 1 + len(v)) for k, v in txt.items()]


def _assert_within_the_documented_limits(txt: RawTxt, ip: str) -> None:
    """What an accepted record must satisfy (docs/protocol.md, "TXT keys" and "Validation")."""
    for key in txt:
        text = key.decode("utf-8")
        assert text and text.isascii() and text.isprintable() and "=" not in text, key
        assert text.lower().isascii()
    sizes = _string_sizes(txt)
    assert all(size <= 255 for size in sizes)
    assert sum(size + 1 for size in sizes) <= 1300
    addr = ipaddress.ip_address(ip)
    assert ip == str(addr)
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    for a in (addr, mapped):
        assert a is None or not (a.is_multicast or a.is_unspecified)


_FUZZ = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_FUZZ
@given(_records(raw()), st.integers(min_value=-5, max_value=70000))
@example(_REGRESSIONS[0], 22)
@example(_REGRESSIONS[1], 22)
@example(_REGRESSIONS[2], 22)
@example(_REGRESSIONS[3], 22)
@example(_REGRESSIONS[4], 22)
@example(_REGRESSIONS[5], 22)
@example(_REGRESSIONS[6], 22)
@example({**raw(), b"x" * 252: None, b"y" * 252: None}, 22)  # two strings of 253: fine
@example(_bulk_flags(230), 22)  # just under 1300 bytes in total
def test_decode_node_only_raises_announcement_error(txt: RawTxt, port: int) -> None:
    try:
        ann = decode_node(txt, port)
    except AnnouncementError as exc:
        assert str(exc)
        return
    assert isinstance(ann, Announcement)
    _assert_within_the_documented_limits(txt, ann.ip)
    for check, value in [
        (check_node_id, ann.node_id),
        (check_role, ann.role),
        (check_fingerprint, ann.fingerprint),
        (check_key_type, ann.key_type),
    ]:
        assert check(value) == value
    # whatever was accepted encodes back to the same announcement
    wire = {k.encode(): v.encode() for k, v in encode_node(ann).items()}
    assert decode_node(wire, port) == ann


_REGISTRAR = {**drop(raw(), "fp"), b"state": b"active"}


@_FUZZ
@given(_records(_REGISTRAR))
@example({**_REGISTRAR, KELVIN_KT.encode(): b"x"})
@example({**_REGISTRAR, **{f"x{i:03}".encode(): None for i in range(2000)}})
@example({**_REGISTRAR, b"k" * 300: None})
@example({**_REGISTRAR, b"ip": b"::ffff:0.0.0.0"})
@example({**_REGISTRAR, b"ip": b"::ffff:224.0.0.251"})
@example({**_REGISTRAR, b"ip": b"0:0:0:0:0:0:0:1"})
def test_decode_registrar_only_raises_announcement_error(txt: RawTxt) -> None:
    try:
        ann = decode_registrar(txt, 22)
    except AnnouncementError as exc:
        assert str(exc)
        return
    assert isinstance(ann, RegistrarAnnouncement)
    _assert_within_the_documented_limits(txt, ann.ip)
    assert decode_registrar(encode_registrar(ann), 22) == ann


@pytest.mark.parametrize("txt", _REGRESSIONS[:-1])
def test_fuzzing_regressions_are_rejected(txt: RawTxt) -> None:
    rejected(txt)


def test_fuzzing_regression_unnormalised_address() -> None:
    assert decode_node(_REGRESSIONS[-1], 22).ip == "::1"
