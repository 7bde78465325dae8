"""SSH key material (registration/_sshkeys.py), checked against OpenSSH's own ssh-keygen."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration._exceptions import KeyMaterialError
from registration._sshkeys import (
    PublicKey,
    fingerprint_of_blob,
    generate_ed25519,
    parse_public_key,
    read_public_key,
)
from support.prerequisites import prerequisite

pytestmark = prerequisite("ssh-keygen", reason="needs ssh-keygen (openssh-client)")


def keygen(*args: str) -> str:
    return subprocess.run(
        ["ssh-keygen", *args],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    ).stdout


def keygen_fingerprint(pub: Path) -> str:
    return keygen("-lf", str(pub)).split()[1]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# -- fingerprints ----------


@pytest.mark.parametrize(
    ("kind", "bits", "key_type"),
    [
        ("ed25519", None, "ssh-ed25519"),
        ("ecdsa", "384", "ecdsa-sha2-nistp384"),
        ("rsa", "2048", "ssh-rsa"),
    ],
)
def test_fingerprint_matches_ssh_keygen(
    tmp_path: Path, kind: str, bits: str | None, key_type: str
) -> None:
    private = tmp_path / f"id_{kind}"
    keygen(
        "-q",
        "-t",
        kind,
        *(["-b", bits] if bits else []),
        "-N",
        "",
        "-C",
        "me@host",
        "-f",
        str(private),
    )
    pub = read_public_key(Path(f"{private}.pub"))
    assert pub.key_type == key_type
    assert pub.comment == "me@host"
    assert pub.fingerprint == keygen_fingerprint(Path(f"{private}.pub"))
    assert pub.openssh == Path(f"{private}.pub").read_text().strip()


def test_fingerprint_format() -> None:
    fp = fingerprint_of_blob(b"anything")
    assert fp.startswith("SHA256:")
    assert len(fp) == len("SHA256:") + 43
    assert "=" not in fp
    assert fingerprint_of_blob(b"anything") == fp
    assert fingerprint_of_blob(b"anything else") != fp


# -- generate_ed25519 ----------


def test_generate_makes_a_key_pair_openssh_accepts(tmp_path: Path, umask_022: None) -> None:
    private = tmp_path / "keys" / "controller_ed25519"
    key = generate_ed25519(private, comment="autoreg-controller")
    public = Path(f"{private}.pub")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert private.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in private.parent.iterdir()) == [
        "controller_ed25519",
        "controller_ed25519.pub",
    ]  # no temporary files left
    # ssh-keygen can derive the public key from the private one: same key
    derived = keygen("-y", "-f", str(private)).split()
    written = public.read_text().split()
    assert derived[:2] == written[:2]
    assert written[2] == "autoreg-controller"
    assert key.key_type == "ssh-ed25519"
    assert key.fingerprint == keygen_fingerprint(public)
    assert key == read_public_key(public)


def test_generate_refuses_to_overwrite_a_private_key(tmp_path: Path) -> None:
    private = tmp_path / "controller_ed25519"
    first = generate_ed25519(private, comment="first")
    before = private.read_bytes(), Path(f"{private}.pub").read_bytes()
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        generate_ed25519(private, comment="second")
    assert (private.read_bytes(), Path(f"{private}.pub").read_bytes()) == before
    assert read_public_key(Path(f"{private}.pub")) == first


def test_generate_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    private = tmp_path / "controller_ed25519"
    Path(f"{private}.pub").write_text("ssh-ed25519 AAAA leftover\n")
    with pytest.raises(KeyMaterialError, match="already exists"):
        generate_ed25519(private, comment="x")
    assert not private.exists()
    assert Path(f"{private}.pub").read_text() == "ssh-ed25519 AAAA leftover\n"


def test_each_generated_key_is_new(tmp_path: Path) -> None:
    one = generate_ed25519(tmp_path / "a", comment="a")
    two = generate_ed25519(tmp_path / "b", comment="b")
    assert one.blob != two.blob


# -- parsing ----------


def _ed25519_line(tmp_path: Path) -> str:
    return generate_ed25519(tmp_path / "k", comment="c").openssh


def test_parse_valid_line_without_comment(tmp_path: Path) -> None:
    key_type, b64 = _ed25519_line(tmp_path).split()[:2]
    pub = parse_public_key(f"  {key_type} {b64}  \n", source="test")
    assert pub == PublicKey(key_type, base64.b64decode(b64), "")
    assert pub.openssh == f"{key_type} {b64}"


def test_comment_with_spaces_is_kept(tmp_path: Path) -> None:
    key_type, b64 = _ed25519_line(tmp_path).split()[:2]
    assert parse_public_key(f"{key_type} {b64} root@cc1 (main)", source="t").comment == (
        "root@cc1 (main)"
    )


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   \n",
        "ssh-ed25519",
        "ssh-ed25519 !!!not-base64!!!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE",  # bad padding
        "ssh-ed25519 AAAA",  # a 3-byte blob
        "ssh-ed25519 /////w==",  # length prefix far beyond the blob
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB",  # an ssh-rsa blob
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\u00e9==",  # non-ASCII
    ],
)
def test_malformed_lines(line: str) -> None:
    with pytest.raises(KeyMaterialError) as info:
        parse_public_key(line, source="node.pub")
    assert str(info.value).startswith("node.pub: ")


def test_key_type_must_match_the_blob(tmp_path: Path) -> None:
    _, b64 = _ed25519_line(tmp_path).split()[:2]
    with pytest.raises(KeyMaterialError, match="does not match"):
        parse_public_key(f"ssh-rsa {b64}", source="t")


def test_read_public_key_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="cannot read"):
        read_public_key(tmp_path / "nope.pub")


def test_read_public_key_binary(tmp_path: Path) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyMaterialError):
        read_public_key(path)


def test_truncated_blob_is_rejected(tmp_path: Path) -> None:
    key_type, b64 = _ed25519_line(tmp_path).split()[:2]
    blob = base64.b64decode(b64)
    assert len(blob) == 51  # 4 + len("ssh-ed25519") + 4 + 32
    truncated = base64.b64encode(blob[:15]).decode()  # the type string, nothing more
    with pytest.raises(KeyMaterialError):
        parse_public_key(f"{key_type} {truncated}", source="t")


def test_without_cryptography_the_wire_format_is_still_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node agent carries no cryptography: a truncated key is still refused."""
    import builtins

    real_import = builtins.__import__

    def no_cryptography(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("cryptography"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)
    line = "ssh-ed25519 " + base64.b64encode(blob).decode()
    assert parse_public_key(line, source="k").blob == blob
    for bad in (blob[:-1], blob + b"\x00", blob[:15]):
        with pytest.raises(KeyMaterialError, match="not a valid ssh-ed25519"):
            parse_public_key("ssh-ed25519 " + base64.b64encode(bad).decode(), source="k")
