"""What a node's install medium carries, and rendering it (jinja2, StrictUndefined).

A medium is everything a node needs to come up, announce and (if it must)
call back with nothing typed by hand: its autoreg configuration, the
controller's public key for CONTROLLER_USER, DHCP on the primary interface and,
for a node behind a firewall, its own callback key and the controller's
host-key pin.  The only secret is that callback key, generated for this node
alone and kept nowhere else (the controller keeps only its public half).
"""

from __future__ import annotations

import dataclasses
import secrets
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import jinja2

from .._config import Config
from .._exceptions import ConfigError
from ..protocol import Announcement
from ..state import Store

__all__ = [
    "CallbackMaterial",
    "Medium",
    "NodeSpec",
    "prepare_medium",
    "render_script",
    "render_seed",
]

#: cloud-init NoCloud seed files (the volume label must be "cidata").
SEED_FILES: Final = ("user-data", "meta-data", "network-config")
ANNOUNCE_UNIT: Final = "autoreg-announce.service"
CALLBACK_UNIT: Final = "autoreg-callback.service"
NODE_CALLBACK_KEY: Final = "/etc/autoreg/keys/callback_ed25519"
NODE_CONTROLLER_PIN: Final = "/etc/autoreg/keys/controller_known_hosts"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSpec:
    role: str
    cluster: str | None
    hostname: str
    node_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackMaterial:
    key_path: str
    private_key: str
    known_hosts_path: str
    known_hosts: str
    ports: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Medium:
    node: NodeSpec
    autoreg_conf: str
    controller_user: str
    controller_home: str
    controller_public_key: str
    callback: CallbackMaterial | None
    units: tuple[str, ...]
    packages: tuple[str, ...]
    interface_match: str = "e*"

    @property
    def instance_id(self) -> str:
        return f"autoreg-{self.node.node_id}"

    @property
    def secrets_summary(self) -> str:
        if self.callback is None:
            return "none (public keys only)"
        return f"this node's own CALLBACK_KEY (revoke: autoreg tunnel remove {self.node.node_id})"


def prepare_medium(
    config: Config,
    store: Store,
    *,
    role: str,
    cluster: str | None,
    hostname: str | None,
    node_id: str | None,
    controller: str,
    callback: bool,
    packages: Sequence[str] = (),
) -> Medium:
    """Validate the request, allocate the tunnel if needed, and gather the content."""
    from .._admin import keys_show
    from ..controller import _tunnels

    spec = config.profile.role(role)
    if spec is None:
        raise ConfigError(
            f"unknown role {role!r}; roles: {', '.join(sorted(config.profile.roles))}"
        )
    if spec.has_cluster and not cluster:
        raise ConfigError(f"role {role} belongs to a cluster: give --cluster")
    node_id = node_id or secrets.token_hex(8)
    hostname = hostname or f"{role}-{node_id[:6]}"
    # The same validators as the announcement protocol: what the node will announce.
    Announcement(
        node_id=node_id,
        role=role,
        ip="192.0.2.1",
        port=22,
        fingerprint="SHA256:" + "A" * 43,
        cluster=cluster,
        name=hostname,
    )
    controller_key = keys_show(config)  # raises with "autoreg keys init" when missing
    material: CallbackMaterial | None = None
    if callback:
        if controller == "auto":
            raise ConfigError(
                "a node that calls back needs --controller ADDRESS (the address "
                "it dials from its network)"
            )
        with tempfile.TemporaryDirectory(prefix="autoreg-media-") as tmp:
            tunnel, private = _tunnels.add_tunnel(
                config, store, node_id, public_key=None, generate_into=Path(tmp)
            )
            assert private is not None
            private_key = private.read_text(encoding="ascii")
        material = CallbackMaterial(
            key_path=NODE_CALLBACK_KEY,
            private_key=private_key,
            known_hosts_path=NODE_CONTROLLER_PIN,
            known_hosts=_tunnels.controller_known_hosts_text(config),
            ports=tunnel.ports,
        )
    user = config.controller.ssh_user
    units = (ANNOUNCE_UNIT, CALLBACK_UNIT) if material else (ANNOUNCE_UNIT,)
    return Medium(
        node=NodeSpec(role=role, cluster=cluster, hostname=hostname, node_id=node_id),
        autoreg_conf=_autoreg_conf(config, role, cluster, node_id, hostname, controller, material),
        controller_user=user,
        controller_home="/root" if user == "root" else f"/home/{user}",
        controller_public_key=controller_key.openssh,
        callback=material,
        units=units,
        packages=tuple(packages),
    )


def _autoreg_conf(
    config: Config,
    role: str,
    cluster: str | None,
    node_id: str,
    hostname: str,
    controller: str,
    material: CallbackMaterial | None,
) -> str:
    lines = [
        "# autoreg configuration of this node, from its install medium.",
        "[autoreg]",
        "transport = auto",
        "",
        "[node]",
        f"role = {role}",
    ]
    if cluster:
        lines.append(f"cluster = {cluster}")
    lines += [f"id = {node_id}", f"name = {hostname}", ""]
    if material is not None:
        lines += [
            "[callback]",
            f"controller = {controller}",
            f"port = {config.callback.port}",
            f"user = {config.controller.callback_user}",
            f"key = {material.key_path}",
            f"known_hosts = {material.known_hosts_path}",
            f"listen_ports = {', '.join(map(str, material.ports))}",
            "",
        ]
    return "\n".join(lines)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("registration.media", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML and shell, not HTML: values go through tojson/shell_quote
        keep_trailing_newline=True,
    )
    env.filters["shell_quote"] = shlex.quote
    return env


def _context(medium: Medium) -> dict[str, object]:
    return {
        "node": medium.node,
        "autoreg_conf": medium.autoreg_conf,
        "controller_user": medium.controller_user,
        "controller_home": medium.controller_home,
        "controller_public_key": medium.controller_public_key,
        "callback": medium.callback,
        "units": medium.units,
        "packages": medium.packages,
        "interface_match": medium.interface_match,
        "instance_id": medium.instance_id,
        "secrets_summary": medium.secrets_summary,
    }


def render_seed(medium: Medium) -> dict[str, bytes]:
    """The NoCloud seed files: user-data, meta-data, network-config."""
    env = _environment()
    context = _context(medium)
    return {name: env.get_template(f"{name}.j2").render(context).encode() for name in SEED_FILES}


def render_script(medium: Medium) -> str:
    """The same content as a standalone AFTER_INSTALL script (installer late commands)."""
    return _environment().get_template("after-install.sh.j2").render(_context(medium))
