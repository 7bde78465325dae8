"""The registrar's HTTPS key pair: made once, never overwritten, pinned by its fingerprint."""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import pytest

from registration._endpoints import parse_listen, parse_pin, parse_registrar_url
from registration._exceptions import KeyMaterialError
from registration._tls import (
    api_identity,
    api_identity_init,
    fingerprint_digest,
    server_context,
)


def test_keys_init_makes_a_key_pair_once_and_the_fingerprint_is_the_certificates(
    tmp_path: Path,
) -> None:
    made, created = api_identity_init(tmp_path / "keys")
    assert created
    assert (made.key_path.stat().st_mode & 0o777, made.cert_path.stat().st_mode & 0o777) == (
        0o600,
        0o644,
    )
    der = ssl.PEM_cert_to_DER_cert(made.cert_path.read_text())
    digest = hashlib.sha256(der).digest()
    assert made.fingerprint == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert fingerprint_digest(made.fingerprint) == digest
    again, created = api_identity_init(tmp_path / "keys")
    assert (again, created) == (made, False)
    server_context(made)  # the pair loads into a TLS server context


def test_a_lone_half_of_the_pair_is_never_replaced(tmp_path: Path) -> None:
    made, _ = api_identity_init(tmp_path)
    made.cert_path.unlink()
    with pytest.raises(KeyMaterialError, match="exists without its pair"):
        api_identity_init(tmp_path)
    with pytest.raises(KeyMaterialError, match="autoreg keys init"):
        api_identity(tmp_path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("198.18.0.1:8443", ("198.18.0.1", 8443)),
        ("[::1]:8443", ("::1", 8443)),
        (" 0.0.0.0:0 ", ("0.0.0.0", 0)),
    ],
)
def test_listen_takes_an_address_and_a_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8443", "clc:8443", "198.18.0.1:99999", "198.18.0.1:x"])
def test_listen_refuses_what_is_not_an_address_and_a_port(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_registrar_urls_are_https_with_a_port_and_nothing_else() -> None:
    assert parse_registrar_url("https://clc.example:8443/") == "https://clc.example:8443"
    assert parse_registrar_url("https://[2001:DB8::1]:8443") == "https://[2001:db8::1]:8443"
    for bad, words in [
        ("http://clc:8443", "HTTPS only"),
        ("https://clc", "name the port"),
        ("https://clc:8443/v1", "nothing else"),
        ("https://user@clc:8443", "nothing else"),
        ("https://clc:99999", "not a URL"),
        ("https://bad_host:8443", "neither an IP address nor a host name"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_registrar_url(bad)


def test_pins_are_sha256_fingerprints() -> None:
    good = "SHA256:" + base64.b64encode(b"\x01" * 32).decode().rstrip("=")
    assert parse_pin(good) == good
    for bad in ("sha256:abc", "SHA256:" + "A" * 42, "MD5:aa:bb"):
        with pytest.raises(ValueError, match="SHA256:"):
            parse_pin(bad)


def test_tools_that_check_names_can_trust_the_certificate_under_its_alias(
    tmp_path: Path,
) -> None:
    """curl --cacert api.crt --connect-to autoreg-registrar:… (docs/admin.md)."""
    import asyncio

    made, _ = api_identity_init(tmp_path)

    async def handshake() -> str:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0,
                                            ssl=server_context(made))  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cafile=str(made.cert_path))
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="autoreg-registrar"
            )
            peer = writer.get_extra_info("peercert")
            writer.close()
            return str(peer["subjectAltName"])
        finally:
            server.close()

    assert "autoreg-registrar" in asyncio.run(handshake())
