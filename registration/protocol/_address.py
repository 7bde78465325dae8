"""Which announced addresses a registrar is willing to connect to (address classes).

The codec (:mod:`._txt`) only rejects what can never be a node's address
(multicast, unspecified).  Loopback and link-local addresses are well formed
but, announced on a LAN, point the registrar at itself or at an interface-local
neighbour; whether such an address is acceptable is the registrar's policy, so
the daemon asks :func:`address_problem` with its configured allow-list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["address_problem"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# In the order they are reported: the first class that applies names the problem.
_CLASSES = (
    ("an unspecified", "is_unspecified"),
    ("a loopback", "is_loopback"),
    ("a link-local", "is_link_local"),
    ("a multicast", "is_multicast"),
)


def address_problem(ip: str, *, allow: Iterable[Network] = ()) -> str | None:
    """Why ``ip`` should not be connected to, or None when it is an ordinary unicast address.

    A problem is an address that is loopback, link-local, unspecified or
    multicast, or the IPv4-mapped IPv6 form of one (``::ffff:127.0.0.1``),
    unless the address (or its IPv4-mapped form) lies in one of the ``allow``
    networks.  A string that is not an address literal is a problem too.
    """
    try:
        addr: _Address = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    candidates = [a for a in (addr, mapped) if a is not None]
    if any(a in net for net in allow for a in candidates):
        return None
    for label, attribute in _CLASSES:
        if getattr(addr, attribute):
            return f"{ip} is {label} address"
        if mapped is not None and getattr(mapped, attribute):
            return f"{ip} is the IPv4-mapped form of {mapped}, {label} address"
    return None
