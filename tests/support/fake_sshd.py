"""An SSH server in the test process, over a socket pair: no network at all.

paramiko's own server side, with a scripted ``exec`` request: each command name
maps to a *behaviour*, a function that gets the server's channel and does what
a remote command would (write to stdout or stderr, end with an exit status, end
without one, or never end).  :func:`connected` gives the client's side as the
:class:`~registration.controller._ssh.VerifiedSession` autoreg would hold after
verifying and logging in.  Everything is closed by :meth:`FakeSshd.close`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Mapping

import paramiko

from registration.controller._ssh import SSHTarget, VerifiedSession

__all__ = ["Behaviour", "FakeSshd", "connected", "host_key", "target"]

Behaviour = Callable[[paramiko.Channel], None]
_HOST_KEY: list[paramiko.PKey] = []


def host_key() -> paramiko.PKey:
    """One RSA host key for the whole test run (generating one takes a moment)."""
    if not _HOST_KEY:
        _HOST_KEY.append(paramiko.RSAKey.generate(1024))
    return _HOST_KEY[0]


def target(name: str = "fake") -> SSHTarget:
    return SSHTarget(
        host=name, port=22, fingerprint="SHA256:x", key_type="ssh-rsa", user="root", timeout=5.0
    )


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: FakeSshd) -> None:
        self._owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._owner.started(channel, command.decode())


class FakeSshd:
    """The server end of one connection; ``commands`` records what was asked to run."""

    def __init__(self, behaviours: Mapping[str, Behaviour]) -> None:
        self._behaviours = dict(behaviours)
        self.commands: list[str] = []
        self._threads: list[threading.Thread] = []
        self._pending: list[threading.Thread] = []
        self._transports: list[paramiko.Transport] = []

    def started(self, channel: paramiko.Channel, command: str) -> bool:
        """The exec request (on the transport's thread): accept it if it is scripted."""
        behaviour = self._behaviours.get(command)
        if behaviour is None:
            return False
        self.commands.append(command)

        def run() -> None:
            # the client may go away: what an interrupted command sees
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                behaviour(channel)

        thread = threading.Thread(target=run, daemon=True, name=f"fake-sshd {command}")
        self._threads.append(thread)
        self._pending.append(thread)  # started once the request's reply is on its way
        return True

    def serve(self, sock: socket.socket) -> None:
        transport = paramiko.Transport(sock)
        send = transport._send_user_message

        def send_then_start(data: object) -> None:
            # paramiko answers an exec request (on its own thread) right after asking
            # us; as with sshd, the command starts only once that answer is sent, so
            # its output or close can never overtake the answer.
            send(data)
            if threading.current_thread() is transport:
                while self._pending:
                    self._pending.pop(0).start()

        transport._send_user_message = send_then_start  # type: ignore[method-assign]
        transport.add_server_key(host_key())
        # With an event, start_server() returns at once (the client's handshake follows).
        transport.start_server(event=threading.Event(), server=_Server(self))
        self._transports.append(transport)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(5)


def connected(server: FakeSshd, name: str = "fake") -> VerifiedSession:
    """A logged-in client session to ``server``, as autoreg holds it after verifying."""
    ours, theirs = socket.socketpair()
    server.serve(theirs)
    client = paramiko.Transport(ours)
    client.start_client(timeout=10)
    client.auth_publickey("root", host_key())
    return VerifiedSession(target(name), client, client.get_remote_server_key())


# -- behaviours ------------------------------------------------------------------------


def writes(out: bytes = b"", err: bytes = b"", status: int | None = 0) -> Behaviour:
    """Write ``out`` and ``err``, then end with ``status`` (None: close without one)."""

    def behaviour(channel: paramiko.Channel) -> None:
        if err:
            channel.sendall_stderr(err)
        if out:
            channel.sendall(out)
        if status is not None:
            channel.send_exit_status(status)
        channel.shutdown_write()
        channel.close()

    return behaviour


def hangs(first: bytes = b"", ended: threading.Event | None = None) -> Behaviour:
    """Write ``first`` and never end by itself; ``ended`` is set once the client hung up."""

    def behaviour(channel: paramiko.Channel) -> None:
        try:
            if first:
                channel.sendall(first)
            while channel.recv(1024):  # b"" once the client closed the channel
                pass
        finally:
            if ended is not None:
                ended.set()

    return behaviour


def quiet_then_exits(after: float, status: int = 0) -> Behaviour:
    """Close stdout and stderr at once (EOF), end with ``status`` ``after`` seconds later."""

    def behaviour(channel: paramiko.Channel) -> None:
        channel.shutdown_write()
        threading.Event().wait(after)  # the command's own run time, not a synchronisation
        channel.send_exit_status(status)
        channel.close()

    return behaviour
