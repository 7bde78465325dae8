"""Network interfaces: the IPv4 address of an interface, the default interface."""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import socket
import struct
from typing import Final

from ._exceptions import ConfigError

__all__ = ["default_interface", "interface_address", "local_addresses", "resolve_interfaces"]

_SIOCGIFADDR: Final = 0x8915  # linux/sockios.h
_FIB_TRIE: Final = "/proc/net/fib_trie"
_IF_INET6: Final = "/proc/net/if_inet6"


def interface_address(name: str) -> str | None:
    """The primary IPv4 address of interface ``name``, None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def default_interface() -> tuple[str, str]:
    """The first non-loopback interface with an IPv4 address, as (name, address)."""
    for _, name in socket.if_nameindex():
        address = interface_address(name)
        if address and not ipaddress.ip_address(address).is_loopback:
            return name, address
    raise ConfigError("no network interface with an IPv4 address: set [node] interface or address")


def resolve_interfaces(names: tuple[str, ...]) -> list[str]:
    """Turn interface names (or literal addresses) into the addresses to bind mDNS to."""
    out: list[str] = []
    for name in names:
        try:
            out.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        address = interface_address(name)
        if address is None:
            raise ConfigError(
                f"interface {name!r} does not exist or has no IPv4 address",
                source="[autoreg] interfaces",
            )
        out.append(address)
    return out


def local_addresses() -> frozenset[str]:
    """Every address of this host (its network namespace), IPv4 and IPv6, normalised.

    IPv4 from the kernel's routing trie (the ``/32 host LOCAL`` entries of
    ``/proc/net/fib_trie``), IPv6 from ``/proc/net/if_inet6``; unreadable files
    contribute nothing.
    """
    found: set[str] = set()
    try:
        with open(_FIB_TRIE, encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            found.add(str(ipaddress.ip_address(previous.split("|--")[1].strip())))
    try:
        with open(_IF_INET6, encoding="ascii") as fh:
            for row in fh:
                raw = row.split()[0] if row.split() else ""
                if len(raw) == 32:
                    found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError):
        pass
    return frozenset(found)
