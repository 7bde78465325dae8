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
from ._signature import JoinToken, SignatureClaim, sign_txt, signature_claim

__all__ = [
    "CONTROLLER_SERVICE_TYPE",
    "KEY_TYPES",
    "NODE_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "Announcement",
    "RegistrarAnnouncement",
    "RegistrarState",
    "check_cluster",
    "check_fingerprint",
    "check_ip",
    "check_key_type",
    "check_name",
    "check_node_id",
    "check_port",
    "check_role",
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
#: The host key types a node may announce (``kt``), strongest first.
KEY_TYPES: Final = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "rsa-sha2-256",
    "rsa-sha2-512",
)
# Each rule in words, as error messages state it (docs/protocol.md has the same table).
_ID_RULE: Final = "4-40 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"
_ROLE_RULE: Final = "1-16 characters of a-z 0-9 -, starting with a lower-case letter"
_CLUSTER_RULE: Final = "1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
_NAME_RULE: Final = "1-63 characters of A-Z a-z 0-9 . -, starting with a letter or digit"
_FP_RULE: Final = "SHA256: followed by 43 unpadded base64 characters, as `ssh-keygen -lf` prints it"
_KT_RULE: Final = "one of " + ", ".join(KEY_TYPES)
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
    #: The signature the record carried (checked by the registrar against its tokens).
    signature: SignatureClaim | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Validate on construction too, so an Announcement is valid wherever it
        # was made (decoded from the network, built by the CLI, or by a test);
        # the address is kept in its normalised form, however it was written.
        check_node_id(self.node_id)
        check_role(self.role)
        object.__setattr__(self, "ip", check_ip(self.ip))
        check_port(self.port)
        check_fingerprint(self.fingerprint)
        check_key_type(self.key_type)
        _check_state(self.state, _NODE_STATES)
        if self.cluster is not None:
            check_cluster(self.cluster)
        if self.name is not None:
            check_name(self.name)

    @property
    def display_name(self) -> str:
        return self.name or self.node_id

    def summary(self) -> dict[str, Any]:
        """The announced fields as plain data (for events), the signature by its token."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        claim = self.signature
        out["signature"] = None if claim is None else {"tid": claim.token_id,
                                                       "ts": claim.timestamp}  # fmt: skip
        return out


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
    #: The registrar's sshd host key (what callback nodes pin), when it has one.
    fingerprint: str | None = None
    #: The scope of an install window open now: a role, or ``*`` (None: closed).
    window: str | None = None

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        check_role(self.role)
        object.__setattr__(self, "ip", check_ip(self.ip))
        check_port(self.port)
        _check_state(self.state, _REGISTRAR_STATES)
        if self.cluster is not None:
            check_cluster(self.cluster)
        if self.name is not None:
            check_name(self.name)
        if self.fingerprint is not None:
            check_fingerprint(self.fingerprint)
        if self.window is not None and self.window != "*":
            check_role(self.window)


def instance_name(role: str, node_id: str) -> str:
    """The DNS-SD instance label: unique by construction because it embeds the id."""
    return f"{role}-{node_id}"


def encode_node(
    ann: Announcement, *, token: JoinToken | None = None, now: float | None = None
) -> dict[str, str]:
    """TXT properties for a node announcement (insertion order = wire order).

    With ``token`` the record is signed at ``now`` (``tid``, ``ts``, ``sig``).
    """
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
    if token is not None:
        if now is None:
            raise ValueError("signing needs the time")
        txt = sign_txt(txt, ann.port, token, now=now)
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
    if ann.fingerprint is not None:
        txt["fp"] = ann.fingerprint
    if ann.window is not None:
        txt["window"] = ann.window
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
            signature=signature_claim(txt, port),
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
        fingerprint=txt.get("fp"),
        window=txt.get("window"),
    )


def _normalise(properties: Mapping[Any, Any]) -> dict[str, str]:
    """Keys checked then lower-cased (RFC 6763 §6.4), values decoded, limits enforced.

    Every string counts against both size limits, whether or not it has a value.
    """
    out: dict[str, str] = {}
    total = 0
    for raw_key, raw_value in properties.items():
        written = _decode(raw_key, "key")
        # Check the key as written: lower-casing maps some non-ASCII characters
        # to ASCII ("\u212a" KELVIN SIGN becomes "k"), so check before folding.
        if not written or not written.isascii() or "=" in written:
            raise AnnouncementError(
                f"invalid key {_quote(written)}: must be printable ASCII without '='",
                field="key",
            )
        key = written.lower()
        value = None if raw_value is None else _decode(raw_value, _shorten(key))
        size = len(written) + (0 if value is None else 1 + len(value.encode()))
        if size > MAX_TXT_STRING:
            raise AnnouncementError(
                f"a string of {size} bytes exceeds {MAX_TXT_STRING}", field=_shorten(key)
            )
        total += size + 1  # its length byte
        if total > MAX_TXT_TOTAL:
            raise AnnouncementError(f"TXT record of over {MAX_TXT_TOTAL} bytes")
        if value is None:
            # RFC 6763 §6.4: a key with no '=' is a boolean attribute. Protocol v1
            # has none, so it is malformed for a key we know and ignored otherwise.
            if key in _KNOWN_KEYS:
                raise AnnouncementError("present without a value", field=key)
            continue
        if key in out:  # RFC 6763 §6.4: only the first occurrence counts
            continue
        out[key] = value
    version = out.get("v")
    if version is None:
        raise AnnouncementError("missing", field="v")
    if version != PROTOCOL_VERSION:
        raise AnnouncementError(f"unsupported protocol version {version!r}", field="v")
    return out


_KNOWN_KEYS: Final = frozenset(
    {"v", "role", "cluster", "ip", "fp", "kt", "id", "state", "name", "tid", "ts", "sig"}
)


def _decode(raw: object, field: str) -> str:
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnnouncementError("not valid UTF-8", field=field) from exc
    else:
        raise AnnouncementError(f"not text but {type(raw).__name__}", field=field)
    if not text.isprintable():
        raise AnnouncementError("contains control characters", field=field)
    return text


def _require(txt: Mapping[str, str], key: str) -> str:
    value = txt.get(key)
    if value is None or value == "":
        raise AnnouncementError("missing", field=key)
    return value


# -- field validators: public, so that configuration and the CLI check values the
# -- way the codec does, and say the same rule in the same words.


def _check(pattern: re.Pattern[str], value: object, field: str, rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise AnnouncementError(f"invalid value {_quote(value)}: must be {rule}", field=field)
    return value


def check_node_id(value: object) -> str:
    """``value`` if it is a valid node id (TXT key ``id``), else AnnouncementError."""
    return _check(_ID_RE, value, "id", _ID_RULE)


def check_role(value: object) -> str:
    """``value`` if it is a well-formed role (TXT key ``role``), else AnnouncementError.

    Whether the role exists is the profile's business, not the protocol's.
    """
    return _check(_ROLE_RE, value, "role", _ROLE_RULE)


def check_cluster(value: object) -> str:
    """``value`` if it is a valid cluster name (TXT key ``cluster``), else AnnouncementError."""
    return _check(_CLUSTER_RE, value, "cluster", _CLUSTER_RULE)


def check_name(value: object) -> str:
    """``value`` if it is a valid host name (TXT key ``name``), else AnnouncementError."""
    return _check(_NAME_RE, value, "name", _NAME_RULE)


def check_fingerprint(value: object) -> str:
    """``value`` if it is a ``SHA256:`` host-key fingerprint (TXT key ``fp``)."""
    return _check(_FP_RE, value, "fp", _FP_RULE)


def check_key_type(value: object) -> str:
    """``value`` if it is a host key type the protocol knows (TXT key ``kt``)."""
    if not isinstance(value, str) or value not in KEY_TYPES:
        raise AnnouncementError(f"invalid value {_quote(value)}: must be {_KT_RULE}", field="kt")
    return value


def check_ip(value: object) -> str:
    """The normalised form of an announceable address literal (TXT key ``ip``).

    An IPv4 or IPv6 literal without a zone, neither multicast nor unspecified,
    also when written as an IPv4-mapped IPv6 address (``::ffff:224.0.0.251``).
    Returns ``str(ipaddress.ip_address(value))``, so ``0:0:0:0:0:0:0:1`` is ``::1``.
    Which unicast classes a registrar accepts is policy: see :func:`address_problem`.
    """
    if not isinstance(value, str):
        raise AnnouncementError(f"invalid value {_quote(value)}: must be an IP address", field="ip")
    if "%" in value:  # a scoped IPv6 address names a local interface: not announceable
        raise AnnouncementError(
            f"invalid value {_quote(value)}: must be an address without a zone (%...)",
            field="ip",
        )
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as exc:
        raise AnnouncementError(
            f"invalid value {_quote(value)}: must be an IPv4 or IPv6 address literal",
            field="ip",
        ) from exc
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    for candidate in (addr, mapped):
        if candidate is not None and (candidate.is_multicast or candidate.is_unspecified):
            raise AnnouncementError(
                f"invalid value {_quote(value)}: must be a unicast address "
                "(not multicast, not unspecified, also in IPv4-mapped form)",
                field="ip",
            )
    return str(addr)


def check_port(value: object) -> int:
    """``value`` if it is a TCP port number 1-65535 (the SRV port), else AnnouncementError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise AnnouncementError(f"invalid port {_quote(value)}: must be 1-65535", field="port")
    return value


def _check_state(value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AnnouncementError(
            f"unknown state {_quote(value)}: must be one of {', '.join(allowed)}",
            field="state",
        )


def _check_sizes(txt: Mapping[str, str]) -> None:
    _normalise({k.encode(): v.encode() for k, v in txt.items()})


def _shorten(value: object, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _quote(value: object) -> str:
    """``value`` shortened and quoted with every non-ASCII character escaped.

    Lookalikes show as what they are: ``'\\u212at'``, not a ``Kt`` that reads as ASCII.
    """
    text = str(value)
    return ascii(text[:40]) + ("..." if len(text) > 40 else "")
