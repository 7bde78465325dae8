"""The registrar's HTTPS identity: a TLS key and a self-signed certificate, pinned by nodes.

``autoreg keys init`` makes both next to CONTROLLER_KEY (``[autoreg] keys_dir``):
``api.key`` (ECDSA P-256, PKCS#8, 0600) and ``api.crt`` (self-signed, PEM, 0644).
No CA is involved: a node trusts the certificate whose SHA-256 fingerprint it was
given (``[node] registrar_fingerprint``), written like an OpenSSH fingerprint,
``SHA256:`` and 43 characters of unpadded base64 of the digest of the DER
certificate.  Nothing is ever trusted on first use.

Key material only (python3-cryptography, as paramiko uses it); no network.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import os
import socket
import ssl
from pathlib import Path
from typing import Final

from ._exceptions import AnnouncementError, KeyMaterialError
from ._files import write_atomic

__all__ = [
    "API_CERT",
    "API_HOST_ALIAS",
    "API_KEY",
    "ApiIdentity",
    "api_identity",
    "api_identity_init",
    "fingerprint_digest",
    "fingerprint_of_der",
    "server_context",
]

API_KEY: Final = "api.key"
API_CERT: Final = "api.crt"
#: The certificate's one name: tools that verify names (curl, Prometheus) trust api.crt
#: as its own CA and connect to this name at the registrar's address.
API_HOST_ALIAS: Final = "autoreg-registrar"
#: The certificate is pinned, never checked against a clock-bound chain: valid long.
VALIDITY_DAYS: Final = 20 * 366


@dataclasses.dataclass(frozen=True, slots=True)
class ApiIdentity:
    key_path: Path
    cert_path: Path
    fingerprint: str  # SHA256:… of the DER certificate


def fingerprint_of_der(der: bytes) -> str:
    """``SHA256:`` + unpadded base64 of the certificate's SHA-256 (as nodes pin it)."""
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint_digest(fingerprint: str) -> bytes:
    """The 32-byte digest a pin names (what aiohttp's ``Fingerprint`` compares)."""
    from .protocol import check_fingerprint  # the same rule as an SSH host-key pin

    try:
        check_fingerprint(fingerprint)
        digest = base64.b64decode(fingerprint.removeprefix("SHA256:") + "=", validate=True)
    except (AnnouncementError, binascii.Error, ValueError) as exc:
        raise ValueError(
            "want SHA256: and 43 characters of base64, as `autoreg keys show` prints "
            "api_fingerprint"
        ) from exc
    return digest


def _paths(keys_dir: Path) -> tuple[Path, Path]:
    return keys_dir / API_KEY, keys_dir / API_CERT


def api_identity(keys_dir: Path) -> ApiIdentity:
    """The registrar's TLS identity; KeyMaterialError naming ``autoreg keys init`` if absent."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    key_path, cert_path = _paths(keys_dir)
    if not cert_path.exists() or not key_path.exists():
        raise KeyMaterialError(
            f"no HTTPS key and certificate in {keys_dir} ({API_KEY}, {API_CERT}); "
            "create them with `autoreg keys init`"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyMaterialError(f"{cert_path}: not a readable PEM certificate: {exc}") from exc
    return ApiIdentity(key_path, cert_path, fingerprint_of_der(cert.public_bytes(Encoding.DER)))


def api_identity_init(keys_dir: Path) -> tuple[ApiIdentity, bool]:
    """Create the TLS key and certificate unless both exist (never overwrites one).

    Returns the identity and whether it was created now.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_path, cert_path = _paths(keys_dir)
    if key_path.exists() and cert_path.exists():
        return api_identity(keys_dir), False
    if key_path.exists() or cert_path.exists():
        present = key_path if key_path.exists() else cert_path
        raise KeyMaterialError(
            f"{present} exists without its pair; move it away, then `autoreg keys init` "
            "makes a new key and certificate (nodes must then pin the new fingerprint)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"autoreg registrar {socket.gethostname()}"[:64])]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(API_HOST_ALIAS)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(key_path, key_pem, mode=0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise KeyMaterialError(f"cannot write the HTTPS key pair in {keys_dir}: {exc}") from exc
    return api_identity(keys_dir), True


def server_context(identity: ApiIdentity) -> ssl.SSLContext:
    """TLS 1.2+ server context holding the registrar's key and certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(identity.cert_path), os.fspath(identity.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise KeyMaterialError(
            f"cannot load the HTTPS key pair {identity.cert_path}, {identity.key_path}: {exc}"
        ) from exc
    return context
