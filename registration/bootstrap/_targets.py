"""Bootstrap targets: ``[user@]host[:port]`` on the command line or in a hosts file."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from .._exceptions import AnnouncementError, ConfigError
from ..protocol import check_cluster, check_role

__all__ = ["Target", "parse_target", "read_hosts_file"]

_USER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
#: Bytes of a hosts file read at most (one line per machine).
MAX_HOSTS_FILE: Final = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One machine to bootstrap, and what it is to become."""

    host: str
    port: int = 22
    user: str | None = None
    role: str | None = None
    cluster: str | None = None

    @property
    def key(self) -> str:
        """How known_hosts names it: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = host if self.port == 22 else f"{host}:{self.port}"
        return f"{self.user}@{where}" if self.user else where


def parse_target(text: str, *, role: str | None = None, cluster: str | None = None) -> Target:
    """``[user@]host[:port]``; an IPv6 address with a port is written ``[addr]:port``."""
    user: str | None = None
    rest = text.strip()
    if "@" in rest:
        user, rest = rest.split("@", 1)
        if not _USER_RE.fullmatch(user):
            raise ConfigError(f"target {text!r}: {user!r} is not a user name")
    port = 22
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"target {text!r}: write an IPv6 address as [ADDRESS]:PORT")
        port_text = tail[1:] if tail else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"target {text!r}: {port_text!r} is not a port number")
        port = int(port_text)
    _check_host(text, host)
    for check, value, what in ((check_role, role, "role"), (check_cluster, cluster, "cluster")):
        if value is not None:
            try:
                check(value)
            except AnnouncementError as exc:
                raise ConfigError(f"target {text!r}: {what} {value!r}: {exc.reason}") from exc
    return Target(host=host, port=port, user=user, role=role, cluster=cluster)


def _check_host(text: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(x) for x in labels):
        raise ConfigError(f"target {text!r}: {host!r} is neither an IP address nor a host name")


def read_hosts_file(path: Path) -> list[Target]:
    """One target per line: ``TARGET [ROLE [CLUSTER]]``; ``#`` starts a comment."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_HOSTS_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"--hosts {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_HOSTS_FILE:
        raise ConfigError(f"--hosts {path}: larger than {MAX_HOSTS_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--hosts {path}: not UTF-8 text ({exc.reason})") from exc
    return list(_hosts_lines(path, text.splitlines()))


def _hosts_lines(path: Path, lines: Iterable[str]) -> Iterable[Target]:
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 3:
            raise ConfigError(
                f"{path}:{number}: want TARGET [ROLE [CLUSTER]], got {line.strip()!r}"
            )
        try:
            yield parse_target(
                fields[0],
                role=fields[1] if len(fields) > 1 else None,
                cluster=fields[2] if len(fields) > 2 else None,
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from exc
