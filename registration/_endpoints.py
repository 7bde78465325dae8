"""Where the HTTPS registration endpoint listens, and how a node names it: parsed and checked.

``[controller] listen = ADDR:PORT`` (an IP literal, IPv6 in brackets), ``[node]
registrar = https://HOST:PORT`` and ``[node] registrar_fingerprint = SHA256:…``.
The same parsers serve the configuration and ``autoreg media --registrar``, so a
value is refused with the same words wherever it is given.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Final

__all__ = [
    "DEFAULT_API_PORT",
    "format_listen",
    "parse_listen",
    "parse_pin",
    "parse_rate",
    "parse_registrar_url",
    "registrar_pair_problem",
]

#: The port documented for ``[controller] listen`` (any free port works).
DEFAULT_API_PORT: Final = 8443
_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_listen(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` → (address, port); ``[v6]:PORT`` for IPv6; port 0 picks a free one."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"want ADDR:PORT, e.g. 198.18.0.1:{DEFAULT_API_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(
            f"{host!r} is not an IP address (the address to listen on: one of this "
            f"host's, or 0.0.0.0 for all; e.g. 198.18.0.1:{DEFAULT_API_PORT})"
        ) from exc
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"port {port_text!r}: must be 0-65535 (0: any free port)")
    return str(address), int(port_text)


def format_listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_registrar_url(value: str) -> str:
    """``https://HOST:PORT`` (a path of ``/`` at most), normalised; else ValueError."""
    text = value.strip()
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from exc
    if url.scheme != "https":
        raise ValueError(f"want https://HOST:PORT (HTTPS only), not {text!r}")
    if url.username or url.password or url.query or url.fragment or url.path not in ("", "/"):
        raise ValueError(f"want https://HOST:PORT and nothing else, not {text!r}")
    host = url.hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
        shown = host
    else:
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
    if port is None:
        raise ValueError(f"name the port: https://{shown}:{DEFAULT_API_PORT}, say")
    if port == 0:
        raise ValueError("port 0 is not a port to connect to")
    return f"https://{shown}:{port}"


def parse_pin(value: str) -> str:
    """A certificate fingerprint as ``autoreg keys show`` prints it (``SHA256:…``)."""
    from ._tls import fingerprint_digest

    text = value.strip()
    fingerprint_digest(text)  # ValueError with the rule
    return text


def parse_rate(value: str) -> float:
    """Requests per second (a positive number, at most 1e6)."""
    number = float(value.strip().removesuffix("/s"))
    if not 0 < number <= 1e6:
        raise ValueError("must be a number of requests per second, above 0")
    return number


def registrar_pair_problem(registrar: str | None, fingerprint: str | None) -> str | None:
    """Why ``[node] registrar`` and ``registrar_fingerprint`` do not go together, or None."""
    if registrar and not fingerprint:
        return (
            "registrar is set without registrar_fingerprint: a node only talks to the "
            "registrar whose certificate it pins (`autoreg keys show` on the registrar "
            "prints it; no trust on first use)"
        )
    if fingerprint and not registrar:
        return "registrar_fingerprint is set without registrar = https://HOST:PORT"
    return None
