"""The exception hierarchy: one root, errors that carry their evidence.

Every error autoreg raises on purpose derives from :class:`AutoregError`.  Errors
from libraries (paramiko, sqlite3, OSError) are translated at the I/O boundary
and re-raised ``from`` the original, so the traceback keeps the cause while the
caller only needs to know this hierarchy.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "AnnouncementError",
    "AutoregError",
    "CommandTimeout",
    "ConfigError",
    "EndpointError",
    "FingerprintMismatch",
    "HookError",
    "KeyMaterialError",
    "NodeNotFound",
    "NodeUnreachable",
    "RegistrarError",
    "RemoteCommandError",
    "SSHError",
    "StateError",
    "TransportError",
]


class AutoregError(Exception):
    """Root of every error autoreg raises on purpose."""

    exit_code: int = 1


class ConfigError(AutoregError):
    """The configuration (file, environment or flags) is invalid."""

    exit_code = 78  # EX_CONFIG

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class StateError(AutoregError):
    """The state store cannot be opened, migrated or written."""

    exit_code = 74  # EX_IOERR


class AlreadyRunning(StateError):
    """Another daemon already works on this state store (one daemon per sqlite store)."""

    exit_code = 75  # EX_TEMPFAIL


class NodeNotFound(AutoregError):
    """No node with that id or name is known to the state store."""

    exit_code = 66  # EX_NOINPUT


class KeyMaterialError(AutoregError):
    """Key material is missing, unreadable, or would be overwritten."""

    exit_code = 73  # EX_CANTCREAT


class AnnouncementError(AutoregError):
    """An announcement (TXT record) violates protocol v1.

    ``reason`` is the short machine-friendly cause, ``field`` the TXT key at fault.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class TransportError(AutoregError):
    """The discovery transport (mDNS responder/browser) failed."""

    exit_code = 69  # EX_UNAVAILABLE


class EndpointError(AutoregError):
    """The HTTPS registration endpoint cannot be served (address, port, key pair)."""

    exit_code = 69  # EX_UNAVAILABLE


class RegistrarError(AutoregError):
    """A registrar's HTTPS endpoint did not answer, or refused a request.

    ``status`` is the HTTP status (None: no answer at all), ``code`` the API's error
    code (``unsigned``, ``bad-signature``, …; "" when there is none), ``retry_after``
    the seconds the registrar asked the node to wait (None: not said).
    """

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.url = url
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(message)


class SSHError(AutoregError):
    """An SSH operation against a node failed."""

    def __init__(self, message: str, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"{host}:{port}: {message}")


class NodeUnreachable(SSHError):
    """The node's sshd could not be reached (refused, timeout, no route)."""


class CommandTimeout(SSHError):
    """A command run on a node over SSH did not end within its time limit."""

    def __init__(self, *, host: str, port: int, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"timed out after {timeout:g}s", host=host, port=port)


class FingerprintMismatch(SSHError):
    """The node's host key is not the one it announced: possible spoofing."""

    def __init__(self, *, host: str, port: int, announced: str, actual: str) -> None:
        self.announced = announced
        self.actual = actual
        super().__init__(
            f"host key fingerprint {actual} does not match announced {announced}",
            host=host,
            port=port,
        )


class RemoteCommandError(SSHError):
    """A step run on a machine over SSH (``bootstrap``) failed: the step, the command,
    its exit status and what it wrote to stderr."""

    def __init__(
        self, step: str, *, host: str, port: int, command: str, returncode: int | None, stderr: str
    ) -> None:
        self.step = step
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        status = "no exit status" if returncode is None else f"exit {returncode}"
        said = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        super().__init__(
            f"{step} failed ({status}{': ' + said[0] if said else ''})", host=host, port=port
        )


class HookError(AutoregError):
    """A registration hook failed; carries the command, exit status and output."""

    def __init__(
        self,
        message: str,
        *,
        command: str,
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        timed_out: bool = False,
    ) -> None:
        self.command = command
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        status = "" if returncode is None or timed_out else f", exit {returncode}"
        super().__init__(f"{message} ({command}{status})")
