"""The address-class policy (registration/protocol/_address.py: address_problem).

The codec accepts any unicast literal; which classes a registrar connects to is
policy, asked per address with the registrar's allow-list.
"""

from __future__ import annotations

import ipaddress

import pytest

from registration.protocol import address_problem, decode_node

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


@pytest.mark.parametrize(
    "ip", ["198.18.0.5", "10.1.2.3", "192.0.2.1", "2001:db8::5", "::ffff:198.18.0.5", "fd00::1"]
)
def test_ordinary_unicast_addresses_have_no_problem(ip: str) -> None:
    assert address_problem(ip) is None
    assert address_problem(ip, allow=[]) is None


@pytest.mark.parametrize(
    ("ip", "words"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.1.2", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::fb", "a multicast address"),
    ],
)
def test_each_class_is_named(ip: str, words: str) -> None:
    problem = address_problem(ip)
    assert problem == f"{ip} is {words}"


@pytest.mark.parametrize(
    ("ip", "v4", "words"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "a loopback address"),
        ("::ffff:7f00:1", "127.0.0.1", "a loopback address"),
        ("::ffff:169.254.1.2", "169.254.1.2", "a link-local address"),
        ("::ffff:0.0.0.0", "0.0.0.0", "an unspecified address"),
        ("::ffff:224.0.0.251", "224.0.0.251", "a multicast address"),
    ],
)
def test_ipv4_mapped_forms_are_problems_too(ip: str, v4: str, words: str) -> None:
    assert address_problem(ip) == f"{ip} is the IPv4-mapped form of {v4}, {words}"


def test_allow_list_lifts_the_policy() -> None:
    loopback = ipaddress.ip_network("127.0.0.0/8")
    link_local6 = ipaddress.ip_network("fe80::/10")
    assert address_problem("127.0.0.5", allow=[loopback]) is None
    assert address_problem("::ffff:127.0.0.5", allow=[loopback]) is None  # the mapped form
    assert address_problem("fe80::1", allow=[loopback, link_local6]) is None
    # only what is listed
    assert address_problem("::1", allow=[loopback]) == "::1 is a loopback address"
    assert address_problem("169.254.0.1", allow=[link_local6]) is not None
    narrow = ipaddress.ip_network("127.0.0.0/30")
    assert address_problem("127.0.0.9", allow=[narrow]) is not None
    # a one-shot iterable is fine
    assert address_problem("127.0.0.1", allow=iter([loopback])) is None


def test_not_an_address_is_a_problem() -> None:
    problem = address_problem("not-an-ip")
    assert problem is not None and "not an IP address" in problem


def test_the_decoder_does_not_apply_the_policy() -> None:
    """Loopback and link-local are well formed: the daemon decides with its allow-list."""
    txt = {"v": "1", "role": "nc", "id": "n1abc", "fp": FP, "state": "ready"}
    for ip in ("127.0.0.1", "fe80::1", "::ffff:127.0.0.1"):
        ann = decode_node({**txt, "ip": ip}, 22)
        assert address_problem(ann.ip) is not None
