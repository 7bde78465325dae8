"""Signed announcements: join tokens and the TXT keys ``tid``, ``ts``, ``sig``.

A join token is ``ID.SECRET``: the id is public (it names the token in the
registrar's store and in the announcement), the secret (at least 128 bits) is
shared by the registrar and the nodes the admin gives it to.  A node that holds
a token adds three TXT keys to its announcement:

``tid``
    the token id;
``ts``
    the time of signing, in whole seconds since the epoch;
``sig``
    HMAC-SHA256, keyed with a key derived from the secret, over the canonical
    encoding of every other key of the record plus the SRV port, truncated to
    16 bytes and written in unpadded base64url (22 characters).

The canonical encoding is ``autoreg-sig-v1`` followed by one line
``key=value`` per TXT key except ``sig``, keys lower-cased and sorted, then
``port=<SRV port>``; lines end with ``\\n``.  So the signature binds the host-key
fingerprint, id, role, cluster, address, port, state and timestamp: change any
of them and it no longer verifies.  See docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Final

from .._exceptions import AnnouncementError

__all__ = [
    "SIGNATURE_KEYS",
    "SIGNATURE_WINDOW",
    "JoinToken",
    "SignatureClaim",
    "canonical_payload",
    "check_token_id",
    "new_token",
    "parse_token",
    "sign_txt",
    "signature_claim",
    "token_key",
    "verify",
]

#: The TXT keys a signed announcement adds.
SIGNATURE_KEYS: Final = ("tid", "ts", "sig")
#: Seconds a signature's timestamp may be off the registrar's clock, either way
#: (a node re-signs every half of it, so a fresh one always arrives in time).
SIGNATURE_WINDOW: Final = 600.0
#: Bytes of HMAC-SHA256 kept in ``sig``: 128 bits, like the secret.
SIGNATURE_BYTES: Final = 16
_DOMAIN: Final = b"autoreg-sig-v1\n"
_KEY_DOMAIN: Final = b"autoreg-token-v1\0"
_TOKEN_ID_RE: Final = re.compile(r"[a-z0-9]{6,16}")
_SECRET_RE: Final = re.compile(r"[A-Za-z0-9_-]{22,86}")
_SIG_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
_TS_RE: Final = re.compile(r"[0-9]{1,12}")
_TOKEN_ID_RULE: Final = "6-16 characters of a-z 0-9"  # noqa: S105 - a rule, not a secret


@dataclasses.dataclass(frozen=True, slots=True)
class JoinToken:
    """A join token as a node holds it (``ID.SECRET``)."""

    token_id: str
    secret: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return f"{self.token_id}.{self.secret}"

    @property
    def key(self) -> bytes:
        return token_key(self.token_id, self.secret)


@dataclasses.dataclass(frozen=True, slots=True)
class SignatureClaim:
    """What a received announcement says about its signature (not verified yet)."""

    token_id: str
    timestamp: int
    signature: bytes
    payload: bytes  # the canonical encoding the signature must cover


def check_token_id(value: object) -> str:
    if not isinstance(value, str) or _TOKEN_ID_RE.fullmatch(value) is None:
        raise AnnouncementError(f"invalid value {value!r}: must be {_TOKEN_ID_RULE}", field="tid")
    return value


def new_token() -> JoinToken:
    """A fresh token: a 10-character id and a 144-bit secret."""
    return JoinToken(secrets.token_hex(5), secrets.token_urlsafe(18))


def parse_token(text: str, *, source: str = "token") -> JoinToken:
    """``ID.SECRET`` as the admin pasted it (surrounding blanks ignored)."""
    token_id, dot, secret = text.strip().partition(".")
    if not dot or _TOKEN_ID_RE.fullmatch(token_id) is None or not _SECRET_RE.fullmatch(secret):
        raise AnnouncementError(
            "not a join token: want ID.SECRET as `autoreg token create` prints it", field=source
        )
    return JoinToken(token_id, secret)


def token_key(token_id: str, secret: str) -> bytes:
    """The HMAC key of a token: what the registrar keeps instead of the secret."""
    return hashlib.sha256(_KEY_DOMAIN + token_id.encode() + b"\0" + secret.encode()).digest()


def canonical_payload(txt: Mapping[str, str], port: int) -> bytes:
    """The bytes a signature covers: every key but ``sig``, sorted, then the port."""
    lines = [f"{key}={value}\n" for key, value in sorted(txt.items()) if key != "sig"]
    return _DOMAIN + "".join(lines).encode() + f"port={port}\n".encode()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def sign_txt(txt: Mapping[str, str], port: int, token: JoinToken, *, now: float) -> dict[str, str]:
    """``txt`` with ``tid``, ``ts`` and ``sig`` added (``sig`` last, as on the wire)."""
    signed = {k: v for k, v in txt.items() if k not in SIGNATURE_KEYS}
    signed["tid"] = token.token_id
    signed["ts"] = str(int(now))
    mac = _mac(token.key, canonical_payload(signed, port))
    signed["sig"] = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    return signed


def signature_claim(txt: Mapping[str, str], port: int) -> SignatureClaim | None:
    """The signature a decoded record carries: None when unsigned; all three keys or none."""
    present = [k for k in SIGNATURE_KEYS if k in txt]
    if not present:
        return None
    if len(present) != len(SIGNATURE_KEYS):
        missing = next(k for k in SIGNATURE_KEYS if k not in txt)
        raise AnnouncementError(
            f"missing: a signed record has all of {', '.join(SIGNATURE_KEYS)}", field=missing
        )
    token_id = check_token_id(txt["tid"])
    if _TS_RE.fullmatch(txt["ts"]) is None:
        raise AnnouncementError("invalid value: must be whole seconds since 1970", field="ts")
    if _SIG_RE.fullmatch(txt["sig"]) is None:
        raise AnnouncementError("invalid value: must be 22 characters of base64url", field="sig")
    try:
        mac = base64.urlsafe_b64decode(txt["sig"] + "==")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the pattern checked it
        raise AnnouncementError("invalid value: not base64url", field="sig") from exc
    return SignatureClaim(token_id, int(txt["ts"]), mac, canonical_payload(txt, port))


def verify(claim: SignatureClaim, key: bytes, *, now: float, window: float) -> str | None:
    """None when the signature is good and fresh, else why not (for the admin)."""
    if not hmac.compare_digest(_mac(key, claim.payload), claim.signature):
        return "the signature does not match the record (a signed field was changed?)"
    skew = claim.timestamp - now
    if abs(skew) > window:
        when = "ahead of" if skew > 0 else "behind"
        return (
            f"signed {abs(skew):.0f} s {when} the registrar's clock "
            f"(accepted: ±{window:.0f} s; a replay, or a clock to fix)"
        )
    return None
