"""The controller end of reverse tunnels: callback keys, ports, and the sshd they meet.

The controller end is OpenSSH's own ``sshd``.  Each node gets its own callback
key and a few ports on the controller's loopback (CONTROLLER_PORT), allocated in
the state store without collisions.  The key may do one thing only: listen on
its own ports.  ``restrict`` drops pty, agent, X11 and user-rc; ``port-forwarding``
re-enables forwarding, and ``permitlisten`` pins it to exactly the node's ports.
``permitlisten`` does not cover Unix-socket forwards, and ``restrict`` does not
stop a command, so the callback user is a dedicated unprivileged account whose
``Match User`` block (:func:`sshd_match_block`) closes the rest.

A node gets more than one port because a node that vanishes without a clean
close leaves its old session holding its forward until sshd gives up on it;
the returning node simply binds its next port, at once.
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .._config import Config
from .._exceptions import AnnouncementError, ConfigError, KeyMaterialError
from .._files import write_atomic
from .._keyfiles import CONTROLLER_HOST_ALIAS, controller_known_hosts_text
from .._nodeconf import callback_section, render_conf
from .._sshkeys import PublicKey, generate_ed25519, parse_public_key
from ..protocol import check_node_id
from ..state import StateStore, Tunnel

__all__ = [
    "CONTROLLER_HOST_ALIAS",
    "add_tunnel",
    "authorized_key_line",
    "authorized_keys_text",
    "callback_config_text",
    "controller_known_hosts_text",
    "probe_tunnel_port",
    "remove_tunnel",
    "sshd_match_block",
    "write_authorized_keys",
]

#: Seconds a tunnel probe waits for the node's sshd banner through the forward.
PROBE_TIMEOUT: Final = 2.0


#: An SSH key type name (ssh-ed25519, ecdsa-sha2-nistp256, sk-ssh-ed25519@openssh.com).
_KEY_TYPE_RE: Final = re.compile(r"[a-z0-9][a-z0-9@.-]{0,63}")


def authorized_key_line(node_id: str, ports: Sequence[int], key: PublicKey) -> str:
    """The one authorized_keys line for a node's callback key: a single line, always.

    Built only from checked parts: a valid node id, port numbers, and the key's
    type and blob (re-encoded here; the key's own comment and anything else on
    its line are dropped).  The options are exactly ``restrict``,
    ``port-forwarding``, one ``permitlisten`` per port, and ``command``.
    Raises ValueError if a part does not pass, rather than write a line that
    could carry a newline, a control character or options of its own.
    """
    try:
        check_node_id(node_id)
    except AnnouncementError as exc:
        raise ValueError(f"node {exc}") from exc
    if not ports:
        raise ValueError("no ports to listen on")
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}: must be 1-65535")
    if not isinstance(key.key_type, str) or not _KEY_TYPE_RE.fullmatch(key.key_type):
        raise ValueError(f"invalid key type {key.key_type!a}")
    if not key.blob:
        raise ValueError("empty public key")
    blob = base64.b64encode(key.blob).decode("ascii")
    listen = ",".join(f'permitlisten="127.0.0.1:{port}"' for port in ports)
    line = (
        f'restrict,port-forwarding,{listen},command="/bin/false" '
        f"{key.key_type} {blob} autoreg-callback:{node_id}"
    )
    if not (line.isascii() and line.isprintable()):  # the invariant, whatever changes above
        raise ValueError("the authorized_keys line would hold a control character")
    return line


def authorized_keys_text(tunnels: list[Tunnel]) -> str:
    lines = [
        "# Managed by autoreg (autoreg tunnel add/remove): one line per node.",
        "# Each key may only listen on its node's own ports on the loopback.",
    ]
    for tunnel in tunnels:
        source = f"tunnel {tunnel.node_id!a}"
        key = parse_public_key(tunnel.public_key, source=source)
        try:
            lines.append(authorized_key_line(tunnel.node_id, tunnel.ports, key))
        except ValueError as exc:
            raise KeyMaterialError(f"{source}: {exc}") from exc
    return "\n".join(lines) + "\n"


async def write_authorized_keys(config: Config, store: StateStore) -> Path:
    """Rewrite the callback user's authorized_keys from the store, atomically."""
    path = config.controller.callback_authorized_keys
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, authorized_keys_text(await store.tunnels()), mode=0o644)
    return path


async def add_tunnel(
    config: Config,
    store: StateStore,
    node_id: str,
    *,
    public_key: str | None,
    generate_into: Path | None,
) -> tuple[Tunnel, Path | None]:
    """Allocate ports for ``node_id`` and authorise its callback key.

    Either ``public_key`` (an OpenSSH line) or ``generate_into`` (a directory where a
    new key pair is created for the node's install medium) must be given.
    """
    check_node_id(node_id)  # before it names a file or reaches authorized_keys
    private: Path | None = None
    if generate_into is not None:
        private = generate_into / f"{node_id}_callback_ed25519"
        public_key = generate_ed25519(private, comment=f"autoreg-callback:{node_id}").openssh
    if public_key is None:
        raise ConfigError("give the node's callback public key, or --generate a key pair")
    if len(public_key.strip().splitlines()) > 1:
        raise KeyMaterialError(f"callback key of {node_id}: more than one line")
    parse_public_key(public_key, source=f"callback key of {node_id}")
    ctl = config.controller
    tunnel = await store.allocate_tunnel(
        node_id, public_key.strip(), count=ctl.tunnel_ports_per_node, port_range=ctl.tunnel_ports
    )
    await write_authorized_keys(config, store)
    return tunnel, private


async def remove_tunnel(config: Config, store: StateStore, node_id: str) -> bool:
    removed = await store.remove_tunnel(node_id)
    await write_authorized_keys(config, store)
    return removed


def sshd_match_block(config: Config) -> str:
    """The sshd_config block for the callback user (docs/admin.md explains each line)."""
    ctl = config.controller
    return "\n".join(
        [
            f"# autoreg: reverse tunnels from nodes. The callback user {ctl.callback_user} is a",
            "# dedicated unprivileged account; its keys may only listen on their own ports.",
            f"Match User {ctl.callback_user}",
            f"    AuthorizedKeysFile {ctl.callback_authorized_keys}",
            "    AuthenticationMethods publickey",
            "    PasswordAuthentication no",
            "    KbdInteractiveAuthentication no",
            "    AllowTcpForwarding remote",
            "    AllowStreamLocalForwarding no",
            "    PermitOpen none",
            "    GatewayPorts no",
            "    X11Forwarding no",
            "    AllowAgentForwarding no",
            "    PermitTTY no",
            "    PermitTunnel no",
            "    PermitUserRC no",
            "    ForceCommand /bin/false",
            "    ClientAliveInterval 10",
            "    ClientAliveCountMax 3",
            "",
        ]
    )


def callback_config_text(
    config: Config, tunnel: Tunnel, *, controller: str, key_path: str, known_hosts_path: str
) -> str:
    """The node's ``[callback]`` section for this allocation."""
    values = callback_section(
        config,
        controller=controller,
        key_path=key_path,
        known_hosts_path=known_hosts_path,
        ports=tunnel.ports,
    )
    return render_conf({"callback": values})


def probe_tunnel_port(port: int, *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The SSH banner a node's sshd sends through its tunnel on ``port``, None if none."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            banner = sock.recv(256)
    except OSError:
        return None
    text = banner.decode("ascii", "replace").strip()
    return text if text.startswith("SSH-") else None
