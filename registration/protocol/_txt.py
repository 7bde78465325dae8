"""Announcement protocol v1: the strict TXT-record codec.

A node announces itself as a DNS-SD service of type ``_autoreg._tcp`` whose TXT
record carries ``key=value`` strings (RFC 6763 §6).  This module turns the raw
TXT properties into a validated :class:`Announcement` and back.  It never
raises anything but :class:`~registration._exceptions.AnnouncementError`, so a
hostile or broken record costs one logged rejection, never a crash.

See ``docs/protocol.md`` for the normative description.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from .._exceptions import AnnouncementError

__all__ = [
    "CONTROLLER_SERVICE_TYPE",
    "NODE_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "Announcement",
    "RegistrarAnnouncement",
    "RegistrarState",
    "decode_node",
    "decode_registrar",
    "encode_node",
    "encode_registrar",
    "instance_name",
]

PROTOCOL_VERSION: Final = "1"
NODE_SERVICE_TYPE: Final = "_autoreg._tcp.local."
CONTROLLER_SERVICE_TYPE: Final = "_autoreg-ctl._tcp.local."

# RFC 6763 §6.1: each TXT string is one length byte plus at most 255 bytes.
MAX_TXT_STRING: Final = 255
# RFC 6763 §6.2: a TXT record should fit one packet; 1300 bytes leaves room in
# a 1500-byte Ethernet frame for the rest of the response.
MAX_TXT_TOTAL: Final = 1300

NodeState = Literal["ready", "registered"]
RegistrarState = Literal["active", "locked", "standby"]

_ROLE_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,15}")
_CLUSTER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# 40 characters at most, so "<role>-<id>" and "autoreg-<id>" fit one DNS label (63 bytes).
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{3,39}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
_FP_RE: Final = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_KT_RE: Final = re.compile(
    r"(ssh-ed25519|ssh-rsa|rsa-sha2-256|rsa-sha2-512|ecdsa-sha2-nistp(256|384|521))"
)
_NODE_STATES: Final = ("ready", "registered")
_REGISTRAR_STATES: Final = ("active", "locked", "standby")
DEFAULT_KEY_TYPE: Final = "ssh-ed25519"


@dataclasses.dataclass(frozen=True, slots=True)
class Announcement:
    """A validated node announcement (protocol v1)."""

    node_id: str
    role: str
    ip: str
    port: int
    fingerprint: str
    state: NodeState = "ready"
    cluster: str | None = None
    name: str | None = None
    key_type: str = DEFAULT_KEY_TYPE

    def __post_init__(self) -> None:
        # Validate on construction too, so an Announcement is valid wherever it
        # was made (decoded from the network, built by the CLI, or by a test).
        _check(_ID_RE, self.node_id, "id")
        _check(_ROLE_RE, self.role, "role")
        _check_ip(self.ip)
        _check_port(self.port)
        _check(_FP_RE, self.fingerprint, "fp")
        _check(_KT_RE, self.key_type, "kt")
        if self.state not in _NODE_STATES:
            raise AnnouncementError(f"unknown state {self.state!r}", field="state")
        if self.cluster is not None:
            _check(_CLUSTER_RE, self.cluster, "cluster")
        if self.name is not None:
            _check(_NAME_RE, self.name, "name")

    @property
    def display_name(self) -> str:
        return self.name or self.node_id


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrarAnnouncement:
    """A registrar's own announcement ("I am the CLC", "I'm registered as FOO")."""

    node_id: str
    role: str
    ip: str
    port: int
    state: RegistrarState = "active"
    cluster: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _check(_ID_RE, self.node_id, "id")
        _check(_ROLE_RE, self.role, "role")
        _check_ip(self.ip)
        _check_port(self.port)
        if self.state not in _REGISTRAR_STATES:
            raise AnnouncementError(f"unknown state {self.state!r}", field="state")
        if self.cluster is not None:
            _check(_CLUSTER_RE, self.cluster, "cluster")
        if self.name is not None:
            _check(_NAME_RE, self.name, "name")


def instance_name(role: str, node_id: str) -> str:
    """The DNS-SD instance label: unique by construction because it embeds the id."""
    return f"{role}-{node_id}"


def encode_node(ann: Announcement) -> dict[str, str]:
    """TXT properties for a node announcement (insertion order = wire order)."""
    txt = {
        "v": PROTOCOL_VERSION,
        "role": ann.role,
        "id": ann.node_id,
        "ip": ann.ip,
        "fp": ann.fingerprint,
        "state": ann.state,
    }
    if ann.key_type != DEFAULT_KEY_TYPE:
        txt["kt"] = ann.key_type
    if ann.cluster is not None:
        txt["cluster"] = ann.cluster
    if ann.name is not None:
        txt["name"] = ann.name
    _check_sizes(txt)
    return txt


def encode_registrar(ann: RegistrarAnnouncement) -> dict[str, str]:
    """TXT properties for a registrar announcement."""
    txt = {
        "v": PROTOCOL_VERSION,
        "role": ann.role,
        "id": ann.node_id,
        "ip": ann.ip,
        "state": ann.state,
    }
    if ann.cluster is not None:
        txt["cluster"] = ann.cluster
    if ann.name is not None:
        txt["name"] = ann.name
    _check_sizes(txt)
    return txt


def decode_node(
    properties: Mapping[bytes, bytes | None] | Mapping[str, str | None], port: int
) -> Announcement:
    """Validate raw TXT properties (as python-zeroconf gives them) and the SRV port."""
    txt = _normalise(properties)
    try:
        return Announcement(
            node_id=_require(txt, "id"),
            role=_require(txt, "role"),
            ip=_require(txt, "ip"),
            port=port,
            fingerprint=_require(txt, "fp"),
            state=_require(txt, "state"),  # type: ignore[arg-type]  # checked in __post_init__
            cluster=txt.get("cluster"),
            name=txt.get("name"),
            key_type=txt.get("kt", DEFAULT_KEY_TYPE),
        )
    except TypeError as exc:  # pragma: no cover - dataclass misuse, not input
        raise AnnouncementError(str(exc)) from exc


def decode_registrar(
    properties: Mapping[bytes, bytes | None] | Mapping[str, str | None], port: int
) -> RegistrarAnnouncement:
    txt = _normalise(properties)
    return RegistrarAnnouncement(
        node_id=_require(txt, "id"),
        role=_require(txt, "role"),
        ip=_require(txt, "ip"),
        port=port,
        state=_require(txt, "state"),  # type: ignore[arg-type]
        cluster=txt.get("cluster"),
        name=txt.get("name"),
    )


def _normalise(properties: Mapping[Any, Any]) -> dict[str, str]:
    """Keys lower-cased (RFC 6763 §6.4), values decoded, limits enforced."""
    out: dict[str, str] = {}
    total = 0
    for raw_key, raw_value in properties.items():
        key = _decode(raw_key, "key").lower()
        if not key or not key.isascii() or not key.isprintable() or "=" in key:
            raise AnnouncementError(f"invalid key {key!r}")
        if raw_value is None:
            # RFC 6763 §6.4: a key with no '=' is a boolean attribute. Protocol v1
            # has none, so it is malformed for a key we know and ignored otherwise.
            if key in _KNOWN_KEYS:
                raise AnnouncementError("present without a value", field=key)
            continue
        value = _decode(raw_value, key)
        size = len(key.encode()) + 1 + len(value.encode())
        if size > MAX_TXT_STRING:
            raise AnnouncementError(f"{size} bytes exceeds {MAX_TXT_STRING}", field=key)
        total += size + 1
        if key in out:  # RFC 6763 §6.4: only the first occurrence counts
            continue
        out[key] = value
    if total > MAX_TXT_TOTAL:
        raise AnnouncementError(f"TXT record of {total} bytes exceeds {MAX_TXT_TOTAL}")
    version = out.get("v")
    if version is None:
        raise AnnouncementError("missing", field="v")
    if version != PROTOCOL_VERSION:
        raise AnnouncementError(f"unsupported protocol version {version!r}", field="v")
    return out


_KNOWN_KEYS: Final = frozenset({"v", "role", "cluster", "ip", "fp", "kt", "id", "state", "name"})


def _decode(raw: bytes | str, field: str) -> str:
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnnouncementError("not valid UTF-8", field=field) from exc
    if not text.isprintable():
        raise AnnouncementError("contains control characters", field=field)
    return text


def _require(txt: Mapping[str, str], key: str) -> str:
    value = txt.get(key)
    if value is None or value == "":
        raise AnnouncementError("missing", field=key)
    return value


def _check(pattern: re.Pattern[str], value: str, field: str) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise AnnouncementError(f"invalid value {_shorten(value)!r}", field=field)


def _check_ip(value: str) -> None:
    if "%" in value:  # a scoped IPv6 address names a local interface: not announceable
        raise AnnouncementError(f"scoped address not allowed: {_shorten(value)!r}", field="ip")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as exc:
        raise AnnouncementError(f"not an IP address: {_shorten(value)!r}", field="ip") from exc
    if addr.is_multicast or addr.is_unspecified:
        raise AnnouncementError(f"not a usable unicast address: {value}", field="ip")


def _check_port(port: int) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise AnnouncementError(f"invalid port {port!r}", field="port")


def _check_sizes(txt: Mapping[str, str]) -> None:
    _normalise({k.encode(): v.encode() for k, v in txt.items()})


def _shorten(value: object, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
