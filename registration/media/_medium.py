"""What a node's install medium carries, and rendering it (jinja2, StrictUndefined).

A medium is everything a node needs to come up, announce and (if it must)
call back with nothing typed by hand: its autoreg configuration, the
controller's public key for CONTROLLER_USER, DHCP on the primary interface and,
for a node behind a firewall, its own callback key and the controller's
host-key pin.  The only secret is that callback key, generated for this node
alone and kept nowhere else (the controller keeps only its public half).

The node's configuration is a drop-in, ``/etc/autoreg/autoreg.conf.d/50-medium.conf``
(read after the main file, see :func:`registration._config.load_config`), so the
main file stays the admin's and a package's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
import shlex
from collections.abc import Sequence
from typing import Final

import jinja2

from .._config import Config
from .._endpoints import parse_pin, parse_registrar_url
from .._exceptions import AnnouncementError, ConfigError, KeyMaterialError
from .._nodeconf import callback_section, node_section, render_conf
from .._sshkeys import PublicKey
from ..protocol import check_cluster, check_name, check_node_id, check_role

__all__ = [
    "CallbackMaterial",
    "Medium",
    "MediumRequest",
    "NodeSpec",
    "assemble",
    "callback_material",
    "check_request",
    "render_script",
    "render_seed",
]

ANNOUNCE_UNIT: Final = "autoreg-announce.service"
CALLBACK_UNIT: Final = "autoreg-callback.service"
#: Where the medium puts the node's configuration (a drop-in of /etc/autoreg/autoreg.conf).
NODE_CONFIG: Final = "/etc/autoreg/autoreg.conf.d/50-medium.conf"
NODE_CALLBACK_KEY: Final = "/etc/autoreg/keys/callback_ed25519"
NODE_CONTROLLER_PIN: Final = "/etc/autoreg/keys/controller_known_hosts"
#: The node's single-use join token; the announcer deletes it once registered.
NODE_JOIN_TOKEN: Final = "/etc/autoreg/keys/join_token"  # noqa: S105 - a path
#: systemd-networkd file the AFTER_INSTALL script writes for DHCP.
NETWORKD_FILE: Final = "/etc/systemd/network/20-autoreg-dhcp.network"
#: Interfaces the AFTER_INSTALL script's DHCP configuration matches when none is named.
DEFAULT_INTERFACE_MATCH: Final = "e*"
#: Delimiter of the AFTER_INSTALL script's here-documents.
HEREDOC_END: Final = "AUTOREG_EOF"

_OPTION_OF_FIELD: Final = {
    "id": "--node-id",
    "name": "--hostname",
    "cluster": "--cluster",
    "role": "--role",
}
_IFNAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_USER_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PACKAGE_RE: Final = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?")


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
    controller: str


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
    #: The interface to configure for DHCP; None: the primary one (see docs/media.md).
    interface: str | None = None
    #: The node already had a tunnel whose callback key this medium replaced.
    replaced_callback_key: bool = False
    config_path: str = NODE_CONFIG
    #: A single-use join token (``ID.SECRET``) scoped to the node's role and cluster.
    join_token: str | None = dataclasses.field(default=None, repr=False)
    join_token_id: str | None = None
    join_token_path: str = NODE_JOIN_TOKEN

    @property
    def instance_id(self) -> str:
        return f"autoreg-{self.node.node_id}"

    @property
    def interface_match(self) -> str:
        return self.interface or DEFAULT_INTERFACE_MATCH

    @property
    def secrets_summary(self) -> str:
        parts = []
        if self.join_token_id is not None:
            parts.append(
                f"a single-use join token {self.join_token_id} for {self.node.role}"
                f" (revoke: autoreg token revoke {self.join_token_id})"
            )
        if self.callback is not None:
            parts.append(
                f"this node's own CALLBACK_KEY (revoke: autoreg tunnel remove {self.node.node_id})"
            )
        return "; ".join(parts) or "none (public keys only)"


def _check_controller(controller: str) -> str:
    """An address or a host name the node can dial (it lands in a config file and a script)."""
    if controller == "auto":
        return controller
    try:
        return str(ipaddress.ip_address(controller))
    except ValueError:
        pass
    labels = controller.rstrip(".").split(".")
    if len(controller) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return controller
    raise ConfigError(f"--controller {controller!r} is neither an IP address nor a host name")


@dataclasses.dataclass(frozen=True, slots=True)
class MediumRequest:
    """A validated request for one node's medium (nothing allocated yet)."""

    node: NodeSpec
    controller: str
    callback: bool
    packages: tuple[str, ...]
    interface: str | None
    controller_user: str
    token_ttl: float = 24 * 3600.0
    with_token: bool = True
    #: The registrar's HTTPS endpoint and its certificate pin ([node] registrar, …).
    registrar: tuple[str, str] | None = None


def check_request(
    config: Config,
    *,
    role: str,
    cluster: str | None,
    hostname: str | None,
    node_id: str | None,
    controller: str,
    callback: bool,
    packages: Sequence[str] = (),
    interface: str | None = None,
    token_ttl: float = 24 * 3600.0,
    with_token: bool = True,
    registrar: str | None = None,
    registrar_fingerprint: str | None = None,
) -> MediumRequest:
    """Validate everything a medium needs before anything is allocated for it."""
    spec = config.profile.role(role)
    if spec is None:
        raise ConfigError(
            f"unknown role {role!r}; roles: {', '.join(sorted(config.profile.roles))}"
        )
    if spec.has_cluster and not cluster:
        raise ConfigError(f"role {role} belongs to a cluster: give --cluster")
    if cluster and not spec.has_cluster:
        raise ConfigError(f"role {role} has no cluster: drop --cluster {cluster}")
    node_id = node_id or secrets.token_hex(8)
    hostname = hostname or f"{role}-{node_id[:6]}"
    # The same validators as the announcement protocol: what the node will announce.
    for field, check, value in (
        ("id", check_node_id, node_id),
        ("role", check_role, role),
        ("cluster", check_cluster, cluster),
        ("name", check_name, hostname),
    ):
        if value is None:
            continue
        try:
            check(value)
        except AnnouncementError as exc:
            option = _OPTION_OF_FIELD.get(field, field)
            raise ConfigError(
                f"{option}: {exc.reason} (the node announces it: see docs/protocol.md)"
            ) from exc
    if interface is not None and not _IFNAME_RE.fullmatch(interface):
        raise ConfigError(f"--interface {interface!r} is not an interface name")
    for package in packages:
        if not _PACKAGE_RE.fullmatch(package):
            raise ConfigError(f"--package {package!r} is not a Debian package name")
    user = config.controller.ssh_user
    if not _USER_RE.fullmatch(user):
        raise ConfigError(f"[controller] ssh_user {user!r} is not a user name a medium can create")
    controller = _check_controller(controller)
    if not callback and controller != "auto":
        raise ConfigError(
            "--controller only matters for a node that calls back: add --callback, "
            "or drop --controller (the controller reaches this node directly)"
        )
    if callback and controller == "auto":
        raise ConfigError(
            "a node that calls back needs --controller ADDRESS (the address "
            "it dials from its network)"
        )
    return MediumRequest(
        registrar=_check_registrar(config, registrar, registrar_fingerprint),
        node=NodeSpec(role=role, cluster=cluster, hostname=hostname, node_id=node_id),
        controller=controller,
        callback=callback,
        packages=tuple(packages),
        interface=interface,
        controller_user=user,
        token_ttl=token_ttl,
        with_token=with_token,
    )


def _check_registrar(
    config: Config, url: str | None, fingerprint: str | None
) -> tuple[str, str] | None:
    """(URL, pin) for the medium: the pin given, else this host's own HTTPS certificate's."""
    if url is None:
        if fingerprint is not None:
            raise ConfigError("--registrar-fingerprint needs --registrar https://HOST:PORT")
        return None
    try:
        url = parse_registrar_url(url)
        if fingerprint is not None:
            return url, parse_pin(fingerprint)
    except ValueError as exc:
        option = "--registrar-fingerprint" if fingerprint is not None else "--registrar"
        raise ConfigError(f"{option}: {exc}") from exc
    from .._tls import api_identity

    try:
        return url, api_identity(config.keys_dir).fingerprint
    except KeyMaterialError as exc:
        raise ConfigError(
            f"--registrar: the node pins the registrar's HTTPS certificate, and this host "
            f"has none ({exc}); or give the registrar's --registrar-fingerprint"
        ) from exc


def callback_material(
    request: MediumRequest, *, private_key: str, known_hosts: str, ports: Sequence[int]
) -> CallbackMaterial:
    """What a calling-back node's medium carries: its own key, the pin, its ports."""
    return CallbackMaterial(
        key_path=NODE_CALLBACK_KEY,
        private_key=private_key,
        known_hosts_path=NODE_CONTROLLER_PIN,
        known_hosts=known_hosts,
        ports=tuple(ports),
        controller=request.controller,
    )


def assemble(
    config: Config,
    request: MediumRequest,
    *,
    controller_key: PublicKey,
    callback: CallbackMaterial | None,
    replaced_callback_key: bool = False,
    join_token: tuple[str, str] | None = None,
) -> Medium:
    """The medium's content (pure: the tunnel and the token, if any, already exist).

    ``join_token`` is (token id, ``ID.SECRET``).
    """
    user = request.controller_user
    units = (ANNOUNCE_UNIT, CALLBACK_UNIT) if callback else (ANNOUNCE_UNIT,)
    return Medium(
        node=request.node,
        autoreg_conf=_autoreg_conf(
            config, request.node, callback, join_token is not None, request.registrar
        ),
        controller_user=user,
        controller_home="/root" if user == "root" else f"/home/{user}",
        controller_public_key=controller_key.openssh,
        callback=callback,
        units=units,
        packages=request.packages,
        interface=request.interface,
        replaced_callback_key=replaced_callback_key,
        join_token=join_token[1] if join_token else None,
        join_token_id=join_token[0] if join_token else None,
    )


def _autoreg_conf(
    config: Config,
    node: NodeSpec,
    material: CallbackMaterial | None,
    token: bool,
    registrar: tuple[str, str] | None = None,
) -> str:
    sections: dict[str, dict[str, str]] = {
        "autoreg": {"transport": "auto"},
        "node": node_section(
            role=node.role,
            cluster=node.cluster,
            node_id=node.node_id,
            name=node.hostname,
            token_file=NODE_JOIN_TOKEN if token else None,
            registrar=registrar,
        ),
    }
    if material is not None:
        sections["callback"] = callback_section(
            config,
            controller=material.controller,
            key_path=material.key_path,
            known_hosts_path=material.known_hosts_path,
            ports=material.ports,
        )
    return render_conf(
        sections,
        header=(
            "autoreg configuration of this node, from its install medium.",
            "A drop-in: it overrides /etc/autoreg/autoreg.conf (edit or delete it to change).",
        ),
    )


def _heredoc(text: str) -> str:
    """``text`` as the body of a quoted here-document ending in ``HEREDOC_END``."""
    if not text.endswith("\n"):
        text += "\n"
    if HEREDOC_END in text.splitlines():
        raise ConfigError(f"content holds a line {HEREDOC_END!r}: cannot put it in a script")
    return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("registration.media", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML and shell, not HTML: values go through tojson/shell_quote
        keep_trailing_newline=True,
    )
    env.filters["shell_quote"] = shlex.quote
    env.filters["heredoc"] = _heredoc
    return env


def _context(medium: Medium) -> dict[str, object]:
    return {
        "node": medium.node,
        "autoreg_conf": medium.autoreg_conf,
        "config_path": medium.config_path,
        "controller_user": medium.controller_user,
        "controller_home": medium.controller_home,
        "controller_public_key": medium.controller_public_key,
        "callback": medium.callback,
        "join_token": medium.join_token,
        "join_token_path": medium.join_token_path,
        "units": medium.units,
        "packages": medium.packages,
        "interface": medium.interface,
        "interface_match": medium.interface_match,
        "networkd_file": NETWORKD_FILE,
        "instance_id": medium.instance_id,
        "secrets_summary": medium.secrets_summary,
        "heredoc_end": HEREDOC_END,
    }


def seed_files(medium: Medium) -> tuple[str, ...]:
    """The NoCloud files of this medium: network-config only for a named interface.

    Without one, cloud-init's own fallback applies (DHCP on the interface most likely
    connected, pinned by MAC), which every renderer gets right; a v2 ``match: name``
    glob would not be (cloud-init 22.4 renders it for ifupdown as an interface
    literally named after the YAML key).
    """
    names = ("user-data", "meta-data")
    return (*names, "network-config") if medium.interface else names


def render_seed(medium: Medium) -> dict[str, bytes]:
    """The NoCloud seed files: user-data, meta-data and, with an interface, network-config."""
    env = _environment()
    context = _context(medium)
    return {
        name: env.get_template(f"{name}.j2").render(context).encode() for name in seed_files(medium)
    }


def render_script(medium: Medium) -> str:
    """The same content as a standalone AFTER_INSTALL script (installer late commands)."""
    return _environment().get_template("after-install.sh.j2").render(_context(medium))
