"""Verified SSH sessions to nodes (paramiko, blocking: run in the executor).

"Verify before trusting": the host key the node's sshd presents must have the
fingerprint the node announced, *before* we authenticate or send anything.
paramiko exceptions and socket errors are translated here, at the I/O
boundary, into :mod:`registration._exceptions` and re-raised ``from`` them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import logging
import posixpath
import secrets
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Final

import paramiko

from .._exceptions import (
    CommandTimeout,
    FingerprintMismatch,
    KeyMaterialError,
    NodeUnreachable,
    SSHError,
)
from .._sshkeys import fingerprint_of_blob

__all__ = [
    "DIRECT",
    "Direct",
    "SSHTarget",
    "VerifiedSession",
    "ViaProxy",
    "ViaTunnel",
    "load_private_key",
    "open_verified",
]

log = logging.getLogger(__name__)

#: Seconds between SSH keepalives while a session is held open during a hook.
KEEPALIVE_INTERVAL: Final = 15
#: Bytes read from a command's stdout or stderr at a time.
READ_CHUNK: Final = 32768

# paramiko offers RSA host keys under three signature names.
_KEY_TYPE_ALIASES: Final = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "rsa-sha2-256": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "rsa-sha2-512": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class SSHTarget:
    """Where and as whom to connect, and which host key to expect."""

    host: str
    port: int
    fingerprint: str
    key_type: str
    user: str
    timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class Direct:
    """Connect to the node's announced address."""

    name: ClassVar[str] = "direct"

    def describe(self) -> str:
        return "direct"


@dataclasses.dataclass(frozen=True, slots=True)
class ViaTunnel:
    """Connect through the node's reverse tunnel: a port on the controller's loopback."""

    port: int
    host: str = "127.0.0.1"
    name: ClassVar[str] = "tunnel"

    def describe(self) -> str:
        return f"tunnel:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class ViaProxy:
    """Connect through a proxy node: a ``direct-tcpip`` channel is the next socket."""

    proxy: SSHTarget
    name: ClassVar[str] = "proxy"

    def describe(self) -> str:
        return f"proxy:{self.proxy.host}"


DIRECT: Final = Direct()
Via = Direct | ViaTunnel | ViaProxy


def load_private_key(path: Path) -> paramiko.PKey:
    """Load the controller's private key (ed25519, ECDSA or RSA, OpenSSH format)."""
    try:
        data = path.read_text(encoding="ascii")
    except OSError as exc:
        raise KeyMaterialError(
            f"{path}: cannot read the controller key ({exc.strerror}); "
            "create it with `autoreg keys init`"
        ) from exc
    errors: list[str] = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(data))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise KeyMaterialError(f"{path}: not a usable private key ({'; '.join(errors)})")


class VerifiedSession:
    """An authenticated SSH connection whose host key matched the announcement."""

    def __init__(
        self,
        target: SSHTarget,
        transport: paramiko.Transport,
        host_key: paramiko.PKey,
        *,
        via: Via = DIRECT,
        proxy: VerifiedSession | None = None,
        owns_proxy: bool = True,
    ) -> None:
        self.target = target
        self._transport = transport
        self.host_key = host_key
        self.via = via
        self.proxy = proxy  # the session to the proxy node, when via is a ViaProxy
        # A proxy session shared by many nodes (a ProxyPool's) is closed by its owner.
        self._owns_proxy = owns_proxy

    @property
    def host_key_line(self) -> str:
        """The verified key as ``type base64`` (for a known_hosts file)."""
        return f"{self.host_key.get_name()} {self.host_key.get_base64()}"

    def authenticate(self, key: paramiko.PKey) -> None:
        """Log in as the target's user with the controller key."""
        host, port, user = self.target.host, self.target.port, self.target.user
        try:
            self._transport.auth_publickey(user, key)
        except paramiko.AuthenticationException as exc:
            raise SSHError(
                f"the node refused the controller key for user {user!r} "
                "(is CONTROLLER_KEY in its authorized_keys?)",
                host=host,
                port=port,
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(
                f"authentication failed: {_describe(exc)}", host=host, port=port
            ) from exc

    @property
    def local_address(self) -> str | None:
        """This end's address on a direct connection (the node reaches us there)."""
        sock = self._transport.sock
        if isinstance(sock, socket.socket):
            return str(sock.getsockname()[0])
        return None

    def alive(self) -> bool:
        return self._transport.is_active() and self._transport.is_authenticated()

    def close(self) -> None:
        """Close the connection (thread-safe: a command running on it ends at once)."""
        with contextlib.suppress(Exception):
            self._transport.close()
        if self.proxy is not None and self._owns_proxy:
            self.proxy.close()

    def run_command(
        self, command: str, *, timeout: float, output: Callable[[str, bytes], None]
    ) -> int | None:
        """Run ``command`` (one shell command line) on the node, over this connection.

        ``output(stream, data)`` gets what the command writes as it arrives (stream
        ``"out"`` or ``"err"``).  Returns its exit status, or None when it ended
        without one (killed by a signal, or the connection closed under it: see
        :meth:`close`).  After ``timeout`` seconds the channel is closed, so sshd
        hangs up on the command, and :class:`CommandTimeout` is raised.
        """
        host, port = _where(self.target, self.via)
        deadline = time.monotonic() + timeout
        try:
            channel = self._transport.open_session(timeout=self.target.timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"cannot open a session for the command: {_describe(exc)}", host=host, port=port
            ) from exc
        try:
            channel.exec_command(command)
            if not _pump(channel, deadline, output):
                raise CommandTimeout(host=host, port=port, timeout=timeout)
            # paramiko leaves -1 when the channel closed without an exit-status message.
            return channel.exit_status if channel.exit_status >= 0 else None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"running the command failed: {_describe(exc)}", host=host, port=port
            ) from exc
        finally:
            channel.close()

    def open_channel(self, target: SSHTarget, host: str, port: int) -> paramiko.Channel:
        """A ``direct-tcpip`` channel from this (proxy) node to ``target``: no nc needed."""
        try:
            return self._transport.open_channel(
                "direct-tcpip",
                (target.host, target.port),
                ("127.0.0.1", 0),
                timeout=target.timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(
                f"the proxy could not connect: {_describe(exc)}", host=host, port=port
            ) from exc

    def forward_remote(self, handler: Callable[[paramiko.Channel], None]) -> int:
        """Have the node's sshd listen on a free port of its loopback; each connection to
        it arrives here as a channel, handed to ``handler`` (on paramiko's thread: it
        must not block).  The port, which lives as long as this connection."""
        try:
            port = self._transport.request_port_forward(
                "127.0.0.1", 0, handler=lambda channel, _origin, _server: handler(channel)
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"the node's sshd refused a remote port forward ({_describe(exc)}): "
                "is AllowTcpForwarding on?",
                host=self.target.host,
                port=self.target.port,
            ) from exc
        return int(port)

    def read_file(self, path: str, *, limit: int = 65536) -> bytes | None:
        """The first ``limit`` bytes of ``path`` on the node, None when it does not exist."""
        try:
            sftp = paramiko.SFTPClient.from_transport(self._transport)
            if sftp is None:
                raise SSHError(
                    "cannot open an SFTP channel", host=self.target.host, port=self.target.port
                )
            with contextlib.closing(sftp):
                try:
                    with sftp.open(path, "rb") as fh:
                        return bytes(fh.read(limit))
                except FileNotFoundError:
                    return None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"cannot read {path}: {exc}", host=self.target.host, port=self.target.port
            ) from exc

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write ``path`` on the node atomically (temp file + rename), creating parents."""
        try:
            sftp = paramiko.SFTPClient.from_transport(self._transport)
            if sftp is None:
                raise SSHError(
                    "cannot open an SFTP channel", host=self.target.host, port=self.target.port
                )
            with contextlib.closing(sftp):
                _makedirs(sftp, posixpath.dirname(path))
                tmp = f"{path}.tmp-{secrets.token_hex(4)}"
                with sftp.open(tmp, "wb") as fh:
                    fh.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"cannot write {path}: {exc}", host=self.target.host, port=self.target.port
            ) from exc


def open_verified(
    target: SSHTarget,
    key: paramiko.PKey | None,
    *,
    via: Via = DIRECT,
    proxy_key: paramiko.PKey | None = None,
    sock: socket.socket | None = None,
    proxy_session: VerifiedSession | None = None,
    learn: bool = False,
) -> VerifiedSession:
    """Connect to ``target`` over ``via`` and check its host key against the fingerprint.

    One entry point for every path: ``via`` only decides where the socket comes
    from (the announced address, a reverse-tunnel port on loopback, or a channel
    through a proxy node); the fingerprint check is the same on all of them.
    With ``key`` the session is also authenticated; without, call
    :meth:`VerifiedSession.authenticate` later (the daemon does that in parallel
    with the hook, so authentication costs no latency).  ``proxy_key`` (default
    ``key``) logs in to the proxy node, which must happen before anything else.
    ``sock``: a direct path's TCP connection already made (it is consumed).
    ``proxy_session``, an authenticated session to ``via``'s proxy that the caller
    owns and shares between nodes (a ``ProxyPool``'s), is used instead of a
    connection of our own; it stays open when this session closes.
    ``learn``: no fingerprint to compare yet (``bootstrap --accept-new``); the key
    the host presented is ``session.host_key``, for the caller to record.
    """
    host, port = _where(target, via)
    proxy: VerifiedSession | None = None
    conn: socket.socket | paramiko.Channel
    if sock is not None:
        conn = sock
        sock.settimeout(target.timeout)
    elif isinstance(via, ViaProxy):
        if proxy_session is not None:
            proxy = proxy_session
        else:
            login = proxy_key or key
            if login is None:
                raise ValueError("a proxy path needs a key to log in to the proxy")
            proxy = open_verified(via.proxy, login)
        conn = proxy.open_channel(target, host, port)
    else:
        address = (via.host, via.port) if isinstance(via, ViaTunnel) else (target.host, target.port)
        try:
            conn = socket.create_connection(address, timeout=target.timeout)
        except OSError as exc:
            raise NodeUnreachable(_describe(exc), host=host, port=port) from exc
        # The handshake is a ping-pong of small packets: without this, Nagle's algorithm
        # meets the peer's delayed ACK and a round trip can cost 40 ms.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(conn)
    try:
        transport.banner_timeout = target.timeout
        transport.handshake_timeout = target.timeout
        options = transport.get_security_options()
        if target.key_type:  # none when learning: paramiko's own order (ed25519 first)
            options.key_types = _KEY_TYPE_ALIASES.get(target.key_type, (target.key_type,))
        try:
            transport.start_client(timeout=target.timeout)
            # start_client() can return on timeout without raising: check for a session.
            if not transport.is_active() or transport.remote_version is None:
                raise paramiko.SSHException("no SSH session within the timeout")
            host_key = transport.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(
                f"SSH handshake failed: {_describe(exc)}", host=host, port=port
            ) from exc
        actual = fingerprint_of_blob(base64.b64decode(host_key.get_base64()))
        if not learn and actual != target.fingerprint:
            raise FingerprintMismatch(
                announced=target.fingerprint, actual=actual, host=host, port=port
            )
        transport.set_keepalive(KEEPALIVE_INTERVAL)
        session = VerifiedSession(
            target, transport, host_key, via=via, proxy=proxy, owns_proxy=proxy_session is None
        )
        if key is not None:
            session.authenticate(key)
        return session
    except BaseException:
        transport.close()
        if proxy is not None and proxy_session is None:
            proxy.close()
        raise


def _pump(channel: paramiko.Channel, deadline: float, output: Callable[[str, bytes], None]) -> bool:
    """Hand on a command's output until it ends; False when ``deadline`` came first.

    The channel's ``fileno()`` is readable while output is buffered and stays so
    after EOF; from then on the wait is for the exit status (which a closed
    channel also signals), not on the descriptor.
    """
    channel.setblocking(False)
    while True:
        while channel.recv_stderr_ready():
            output("err", channel.recv_stderr(READ_CHUNK))
        while channel.recv_ready():
            output("out", channel.recv(READ_CHUNK))
        remaining = deadline - time.monotonic()
        if channel.closed or channel.eof_received:
            break
        if remaining <= 0:
            return False
        select.select([channel], [], [], remaining)
    # EOF (or closed): what is still buffered, then the exit status.
    while channel.recv_stderr_ready():
        output("err", channel.recv_stderr(READ_CHUNK))
    while channel.recv_ready():
        output("out", channel.recv(READ_CHUNK))
    return channel.status_event.wait(max(0.0, deadline - time.monotonic()))


def _where(target: SSHTarget, via: Via) -> tuple[str, int]:
    """How errors name the endpoint: the address actually dialled, and the path."""
    if isinstance(via, ViaTunnel):
        return f"{target.host} via tunnel {via.host}", via.port
    if isinstance(via, ViaProxy):
        return f"{target.host} via proxy {via.proxy.host}", target.port
    return target.host, target.port


def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    parts: list[str] = []
    while directory not in ("", "/"):
        parts.append(directory)
        directory = posixpath.dirname(directory)
    for part in reversed(parts):
        try:
            sftp.stat(part)
        except OSError:
            sftp.mkdir(part, 0o755)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    if "protocol banner" in text:  # something answered, but it does not speak SSH
        return f"{text} (is an SSH server listening there?)"
    return text
