"""Verified SSH sessions (registration/controller/_ssh.py) against a real OpenSSH sshd.

One sshd per module listens on 127.0.0.1 on a free port, with an ed25519 host key
made by ssh-keygen and an authorized_keys file holding a controller key made by
registration._sshkeys.generate_ed25519 (so key generation and loading are
exercised end to end).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from registration._exceptions import (
    FingerprintMismatch,
    KeyMaterialError,
    NodeUnreachable,
    SSHError,
)
from registration._sshkeys import generate_ed25519, read_public_key
from registration.controller._ssh import (
    SSHTarget,
    VerifiedSession,
    load_private_key,
    open_verified,
)
from support.prerequisites import prerequisite

SSHD = Path("/usr/sbin/sshd")
WRONG_FP = "SHA256:" + "A" * 43

pytestmark = [
    pytest.mark.timeout(60),
    prerequisite(str(SSHD), "ssh-keygen", reason="needs OpenSSH's sshd and ssh-keygen"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    port: int
    host_pub: Path
    fingerprint: str
    controller_key: Path
    stranger_key: Path
    log: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _start(tmp: Path, host_key: Path, authorized: Path) -> tuple[subprocess.Popen[bytes], int]:
    last = ""
    for attempt in range(3):  # a free port can be taken before sshd binds it
        port = free_port()
        cfg = tmp / f"sshd_config.{attempt}"
        log = tmp / "sshd.log"
        cfg.write_text(
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"PidFile {tmp / 'sshd.pid'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if "Server listening on" in log.read_text(errors="replace"):
                return proc, port
            time.sleep(0.02)
        _stop(proc)
        last = log.read_text(errors="replace")
        if "Address already in use" not in last:
            break
    pytest.fail(f"sshd did not start:\n{last}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("sshd")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    host_key = tmp / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host", "-f", str(host_key)],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    controller = generate_ed25519(tmp / "keys" / "controller_ed25519", comment="controller")
    generate_ed25519(tmp / "keys" / "stranger_ed25519", comment="stranger")
    authorized = tmp / "authorized_keys"
    authorized.write_text(controller.openssh + "\n")
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{host_key}.pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.split()[1]
    proc, port = _start(tmp, host_key, authorized)
    try:
        yield Server(
            port=port,
            host_pub=Path(f"{host_key}.pub"),
            fingerprint=fingerprint,
            controller_key=tmp / "keys" / "controller_ed25519",
            stranger_key=tmp / "keys" / "stranger_ed25519",
            log=tmp / "sshd.log",
        )
    finally:
        _stop(proc)


def target(server: Server, **changes: object) -> SSHTarget:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "fingerprint": server.fingerprint,
        "key_type": "ssh-ed25519",
        "user": getpass.getuser(),
        "timeout": 5.0,
    }
    values.update(changes)
    return SSHTarget(**values)  # type: ignore[arg-type]


def _any_key() -> paramiko.PKey:
    return paramiko.RSAKey.generate(1024)


@pytest.fixture
def session(server: Server) -> Iterator[VerifiedSession]:
    verified = open_verified(target(server), load_private_key(server.controller_key))
    try:
        yield verified
    finally:
        verified.close()


# -- the happy path ----------


def test_right_fingerprint_gives_an_authenticated_session(
    server: Server, session: VerifiedSession
) -> None:
    assert session.alive()
    key_type, key_b64 = server.host_pub.read_text().split()[:2]
    assert session.host_key_line == f"{key_type} {key_b64}"
    assert session.target.fingerprint == server.fingerprint
    session.close()
    assert not session.alive()
    session.close()  # idempotent


def test_write_file_creates_parents_and_sets_the_mode(
    session: VerifiedSession, tmp_path: Path
) -> None:
    dest = tmp_path / "node" / "var" / "lib" / "autoreg" / "receipt.json"
    session.write_file(str(dest), b'{"v": 1}\n', mode=0o600)
    assert dest.read_bytes() == b'{"v": 1}\n'
    assert dest.stat().st_mode & 0o777 == 0o600
    assert (dest.parent.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["receipt.json"]


def test_write_file_replaces_atomically(session: VerifiedSession, tmp_path: Path) -> None:
    dest = tmp_path / "receipt.json"
    dest.write_bytes(b"old and longer content\n")
    old_inode = dest.stat().st_ino
    session.write_file(str(dest), b"new\n")
    assert dest.read_bytes() == b"new\n"
    assert dest.stat().st_mode & 0o777 == 0o644  # the default mode
    # a rename into place, not a rewrite of the old file
    assert dest.stat().st_ino != old_inode
    assert [p.name for p in tmp_path.iterdir()] == ["receipt.json"]


def test_write_file_failure_is_an_ssh_error(session: VerifiedSession, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SSHError, match="cannot write") as info:
        session.write_file(str(blocker / "receipt.json"), b"x")
    assert not isinstance(info.value, NodeUnreachable)


# -- verification before trust ----------


def test_wrong_fingerprint_is_a_mismatch(server: Server) -> None:
    accepted_before = server.log.read_text(errors="replace").count("Accepted publickey")
    with pytest.raises(FingerprintMismatch) as info:
        open_verified(target(server, fingerprint=WRONG_FP), load_private_key(server.controller_key))
    err = info.value
    assert err.announced == WRONG_FP
    assert err.actual == server.fingerprint
    assert (err.host, err.port) == ("127.0.0.1", server.port)
    assert WRONG_FP in str(err)
    assert server.fingerprint in str(err)
    # the key was checked before authenticating: no login happened
    accepted_after = server.log.read_text(errors="replace").count("Accepted publickey")
    assert accepted_after == accepted_before


def test_unauthorized_key_is_an_ssh_error_not_unreachable(server: Server) -> None:
    with pytest.raises(SSHError) as info:
        open_verified(target(server), load_private_key(server.stranger_key))
    assert not isinstance(info.value, NodeUnreachable | FingerprintMismatch)
    assert "refused the controller key" in str(info.value)
    assert info.value.port == server.port


def test_closed_port_is_unreachable() -> None:
    port = free_port()  # nothing listens there any more
    fake = Server(port, Path("/nonexistent"), WRONG_FP, Path(), Path(), Path())
    with pytest.raises(NodeUnreachable) as info:
        open_verified(target(fake), _any_key())
    assert info.value.port == port
    assert "refused" in str(info.value)


@contextlib.contextmanager
def fake_server(behaviour: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback TCP server running ``behaviour`` on each connection; yields its port."""
    stop = threading.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                behaviour(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _hang_up(conn: socket.socket, stop: threading.Event) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def _not_ssh(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    conn.shutdown(socket.SHUT_RDWR)


def _slow_pre_banner(conn: socket.socket, stop: threading.Event) -> None:
    # RFC 4253 4.2 allows lines before the version string; send one every 0.2 s,
    # so the handshake is never done within the caller's timeout (but no single
    # read times out inside paramiko).
    while not stop.wait(0.2):
        conn.sendall(b"please wait\r\n")


@pytest.mark.parametrize("behaviour", [_hang_up, _not_ssh], ids=["hang-up", "not-ssh"])
def test_broken_server_is_unreachable(
    behaviour: Callable[[socket.socket, threading.Event], None],
) -> None:
    with fake_server(behaviour) as port:
        fake = Server(port, Path("/nonexistent"), WRONG_FP, Path(), Path(), Path())
        with pytest.raises(NodeUnreachable, match="handshake failed") as info:
            open_verified(target(fake, timeout=3.0), _any_key())
        assert info.value.port == port


def test_handshake_slower_than_timeout_is_unreachable() -> None:
    with fake_server(_slow_pre_banner) as port:
        fake = Server(port, Path("/nonexistent"), WRONG_FP, Path(), Path(), Path())
        started = time.monotonic()
        try:
            with pytest.raises(NodeUnreachable):
                open_verified(target(fake, timeout=0.5), _any_key())
        finally:
            assert time.monotonic() - started < 5


def test_host_key_type_not_offered_is_unreachable(server: Server) -> None:
    with pytest.raises(NodeUnreachable, match="handshake"):
        open_verified(
            target(server, key_type="ecdsa-sha2-nistp256"), load_private_key(server.controller_key)
        )


# -- the controller key ----------


def test_generated_key_loads_as_ed25519(server: Server) -> None:
    key = load_private_key(server.controller_key)
    assert isinstance(key, paramiko.Ed25519Key)
    public = read_public_key(Path(f"{server.controller_key}.pub"))
    assert key.get_base64() == public.openssh.split()[1]


def test_load_private_key_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="keys init"):
        load_private_key(tmp_path / "nope")


def test_load_private_key_garbage(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64 at all\n")
    with pytest.raises(KeyMaterialError, match="not a usable private key"):
        load_private_key(path)
