"""The browser's pure parts: TXT strings as received, the UDP drop counter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import RecordUpdate
from zeroconf._dns import DNSService, DNSText
from zeroconf.const import _CLASS_IN, _TYPE_SRV, _TYPE_TXT

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


class _Heard:
    """A BrowseListener that keeps what it was told."""

    def __init__(self) -> None:
        self.resolved: list[dict[bytes, bytes | None]] = []

    def service_resolved(self, service: Any) -> None:
        self.resolved.append(dict(service.properties))

    def service_removed(self, name: str) -> None:  # pragma: no cover - not used here
        raise AssertionError(name)

    def service_unusable(self, name: str, reason: str) -> None:  # pragma: no cover
        raise AssertionError(reason)


def test_an_expired_record_reported_by_the_cache_is_not_news() -> None:
    """python-zeroconf reports the TXT it flushed (cache-flush: one more second) when it
    expires; that older record must not replace the newer one that replaced it."""
    service = "_autoreg._tcp.local."
    name = "n1." + service
    heard = _Heard()
    browser = _zeroconf_browse.Browser(cast(Any, None), service, heard)
    browser._known[name] = name

    def arrive(text: bytes, ttl: int, created: float, at: float) -> None:
        srv = DNSService(name, _TYPE_SRV, _CLASS_IN, 120, 0, 0, 22, "n1.local.", created)
        rec = DNSText(name, _TYPE_TXT, _CLASS_IN, ttl, text, created)
        browser.async_update_records(None, at, [RecordUpdate(srv, None), RecordUpdate(rec, None)])
        browser.async_update_records_complete()

    now = time.time() * 1000
    arrive(txt(b"state=ready"), 4500, now, now)
    arrive(txt(b"state=registered"), 4500, now + 1000, now + 1000)
    # the flushed TXT, its TTL cut to one second, reported as it expires
    arrive(txt(b"state=ready"), 1, now, now + 2000)
    assert heard.resolved == [{b"state": b"ready"}, {b"state": b"registered"}]
