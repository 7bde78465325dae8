"""SSH key material: fingerprints, public-key files, key generation.

Fingerprints are computed exactly as ``ssh-keygen -lf`` prints them:
``SHA256:`` followed by the unpadded base64 SHA-256 of the public key blob.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path

from ._exceptions import KeyMaterialError

__all__ = [
    "PublicKey",
    "fingerprint_of_blob",
    "generate_ed25519",
    "parse_public_key",
    "read_public_key",
]


@dataclasses.dataclass(frozen=True, slots=True)
class PublicKey:
    key_type: str
    blob: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_blob(self.blob)

    @property
    def openssh(self) -> str:
        line = f"{self.key_type} {base64.b64encode(self.blob).decode()}"
        return f"{line} {self.comment}" if self.comment else line


def fingerprint_of_blob(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str, *, source: str) -> PublicKey:
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise KeyMaterialError(f"{source}: not an OpenSSH public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyMaterialError(f"{source}: public key is not valid base64") from exc
    # The blob starts with the length-prefixed key type; it must agree with the line.
    if (
        len(blob) < 4
        or blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace") != parts[0]
    ):
        raise KeyMaterialError(f"{source}: key type {parts[0]} does not match the key blob")
    try:
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    except ImportError:  # the node agent (autoreg bootstrap) carries no cryptography
        _check_wire_format(blob, parts[0], source)
        return PublicKey(parts[0], blob, parts[2] if len(parts) > 2 else "")
    try:  # the whole key must parse, not just its type prefix (a truncated .pub file)
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{source}: not a valid {parts[0]} public key: {exc}") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown types
        raise KeyMaterialError(f"{source}: unsupported public key type {parts[0]}") from exc
    return PublicKey(parts[0], blob, parts[2] if len(parts) > 2 else "")


def _check_wire_format(blob: bytes, key_type: str, source: str) -> None:
    """Without cryptography: the blob is length-prefixed fields that end exactly at its
    end (RFC 4253 §6.6), and an ed25519 key is 32 bytes (RFC 8709)."""
    fields: list[bytes] = []
    at = 0
    while at < len(blob):
        size = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 > len(blob) or at + 4 + size > len(blob):
            raise KeyMaterialError(f"{source}: not a valid {key_type} public key (truncated)")
        fields.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    if len(fields) < 2 or (
        key_type == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32)
    ):
        raise KeyMaterialError(f"{source}: not a valid {key_type} public key")


def read_public_key(path: Path) -> PublicKey:
    """Read an OpenSSH ``.pub`` file (such as the node's sshd host key)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyMaterialError(f"{path}: cannot read public key: {exc}") from exc
    return parse_public_key(text, source=str(path))


def generate_ed25519(private_path: Path, *, comment: str) -> PublicKey:
    """Create an ed25519 key pair in OpenSSH format (private 0600, ``.pub`` 0644).

    Refuses to overwrite: an existing key is never replaced silently.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyMaterialError(f"{path} already exists; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_new(private_path, private, 0o600)
    try:
        _write_new(public_path, f"{public} {comment}\n".encode(), 0o644)
    except BaseException:
        private_path.unlink()
        raise
    return parse_public_key(f"{public} {comment}", source=str(public_path))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, atomically, with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise KeyMaterialError(f"{tmp}: cannot create: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if ``path`` appeared meanwhile: never overwrite
    except FileExistsError as exc:
        raise KeyMaterialError(f"{path} already exists; refusing to overwrite it") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
