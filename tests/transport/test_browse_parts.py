"""The browser's pure parts: TXT strings as received, the UDP drop counter."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registration.transport import _zeroconf_browse
from registration.transport._zeroconf_browse import parse_txt, udp_receive_errors


def txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


def test_txt_strings_as_dns_sd_defines_them() -> None:
    assert parse_txt(txt(b"v=1", b"role=nc", b"flag", b"empty=", b"role=cc")) == {
        b"v": b"1", b"role": b"nc", b"flag": None, b"empty": b"",
    }  # fmt: skip
    assert parse_txt(b"") == {}


def test_a_length_past_the_end_takes_what_is_there() -> None:
    assert parse_txt(b"\x03v=1\x10ro") == {b"v": b"1", b"ro": None}


@given(st.binary(max_size=600))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    for key, value in parse_txt(raw).items():
        assert isinstance(key, bytes) and (value is None or isinstance(value, bytes))


SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
Udp: 100 0 7 50 5 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
UdpLite: 0 0 0 0 0 0 0
"""


def test_the_drop_counter_is_udp_rcvbuf_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snmp = tmp_path / "snmp"
    snmp.write_text(SNMP)
    monkeypatch.setattr(_zeroconf_browse, "_SNMP", snmp)
    assert udp_receive_errors() == 5
    snmp.write_text(SNMP.replace(" RcvbufErrors", " Other"))
    assert udp_receive_errors() == 7  # an old kernel: InErrors
    snmp.write_text("garbage\n")
    assert udp_receive_errors() is None
    monkeypatch.setattr(_zeroconf_browse, "_SNMP", tmp_path / "missing")
    assert udp_receive_errors() is None
