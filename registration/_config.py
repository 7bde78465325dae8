"""Typed, immutable configuration, validated on load.

Precedence: command-line flags > environment > configuration file > defaults.
The file is INI (``/etc/autoreg/autoreg.conf``) with sections ``[autoreg]``,
``[node]``, ``[controller]`` and optional ``[role:NAME]`` sections that
override the chosen role profile.  Unknown sections and keys are errors.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ._endpoints import (
    parse_listen,
    parse_pin,
    parse_rate,
    parse_registrar_url,
    registrar_pair_problem,
)
from ._exceptions import AnnouncementError, ConfigError
from ._profile import ROLE_SECTION_PREFIX, Profile, load_profile
from ._units import parse_duration

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_OVERRIDES",
    "TRUST_POLICIES",
    "CallbackConfig",
    "Config",
    "ControllerConfig",
    "EtcdConfig",
    "NodeConfig",
    "ProxyConfig",
    "load_config",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/autoreg/autoreg.conf")
#: Where the state lives: an embedded sqlite file, or an etcd cluster several
#: registrars share (docs/admin.md, "Several registrars").
STORES: Final = ("sqlite", "etcd")
#: How a registrar trusts announcements (docs/security.md): signed ones only, every
#: node after an approval, or every well-formed one.
TRUST_POLICIES: Final = ("token", "approve", "open")

#: Environment variables that override single settings (``section.key``).
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "AUTOREG_STATE_DIR": "autoreg.state_dir",
    "AUTOREG_KEYS_DIR": "autoreg.keys_dir",
    "AUTOREG_LOG_LEVEL": "autoreg.log_level",
    "AUTOREG_INTERFACES": "autoreg.interfaces",
    "AUTOREG_PROFILE": "autoreg.profile",
    "AUTOREG_TRANSPORT": "autoreg.transport",
    "AUTOREG_STORE": "autoreg.store",
    "AUTOREG_ETCD_ENDPOINTS": "autoreg.etcd_endpoints",
    "AUTOREG_HOOKS_DIR": "controller.hooks_dir",
    "AUTOREG_TOKEN": "node.token",
}


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """What this host announces about itself (``autoreg announce``)."""

    role: str | None = None
    cluster: str | None = None
    node_id: str | None = None
    name: str | None = None
    interface: str | None = None
    address: str | None = None
    ssh_port: int = 22
    host_key: Path = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    receipt_path: Path = Path("/var/lib/autoreg/node/receipt.json")
    registered_when: Path | None = None
    poll_interval: float = 2.0
    probe: bool = False
    #: A join token (``ID.SECRET``) to sign announcements with; or read from token_file.
    token: str | None = dataclasses.field(default=None, repr=False)
    token_file: Path | None = None
    #: The registrar's HTTPS endpoint (``https://HOST:PORT``) and its pinned certificate.
    registrar: str | None = None
    registrar_fingerprint: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerConfig:
    """How this host registers others (``autoreg daemon``)."""

    role: str | None = None
    cluster: str | None = None
    hooks_dir: Path = Path("/etc/autoreg/hooks.d")
    hook_timeout: float = 300.0
    credentials_dir: Path = Path("/etc/autoreg/credentials")
    ssh_user: str = "root"
    connect_timeout: float = 10.0
    max_attempts: int = 5
    retry_initial: float = 5.0
    retry_max: float = 300.0
    node_receipt_path: str = "/var/lib/autoreg/node/receipt.json"
    resume_interrupted: bool = False
    announce_self: bool = True
    max_parallel: int = 8
    callback_user: str = "autoreg-callback"
    tunnel_ports: tuple[int, int] = (20000, 29999)
    tunnel_ports_per_node: int = 2
    callback_authorized_keys: Path = Path("/etc/autoreg/callback_authorized_keys")
    sshd_host_key: Path = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    #: Networks whose addresses a node may announce although they are loopback,
    #: link-local or otherwise not an ordinary unicast address (empty: none).
    allow_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: token | approve | open; None: the store's default (token for a new store, open
    #: for one made by a version without trust).
    trust: str | None = None
    #: Unsigned nodes kept waiting for approval at most; beyond, counted not stored.
    max_pending: int = 1000
    #: Seconds a signature's timestamp may be off this registrar's clock.
    signature_window: float = 600.0
    #: Nodes this registrar keeps at most; announcements of new ones beyond are dropped
    #: (counted, with an event): the memory bound under any announcement rate.
    max_nodes: int = 100_000
    #: TCP connects to nodes open at once (a node takes an SSH slot only once its
    #: address answered); bounded by the file descriptor limit as well.
    max_probes: int = 4096
    #: The event log keeps at most this many events, none older than events_max_age.
    events_keep: int = 50_000
    events_max_age: float = 30 * 86400.0
    #: The HTTPS registration endpoint's (address, port); None: not served.
    listen: tuple[str, int] | None = None
    #: Requests per second one source address may make to it (bursts of three times).
    listen_rate: float = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class EtcdConfig:
    """The etcd cluster of ``[autoreg] store = etcd`` (and the target of ``store migrate``).

    ``endpoints`` are client URLs (``https://host:2379``); ``ca`` is the CA that signs
    the members' certificates, ``cert``/``key`` this host's client certificate (etcd's
    ``--client-cert-auth``).  Every key lives below ``prefix``.  ``timeout`` bounds each
    request to one member; ``lease_ttl`` is the registrar lease that its claims hang on.
    """

    endpoints: tuple[str, ...] = ()
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = "/autoreg/"
    timeout: float = 3.0
    lease_ttl: float = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackConfig:
    """The node's callback service (``autoreg callback``): a reverse SSH tunnel home.

    The node dials ``controller``:``port`` as ``user`` with ``key``, trusting only
    the host key in ``known_hosts``, and forwards ``forward`` (its own sshd) to one
    of ``listen_ports`` on the controller's loopback.
    """

    controller: str | None = None
    port: int = 2222
    user: str = "autoreg-callback"
    key: Path = Path("/etc/autoreg/keys/callback_ed25519")
    known_hosts: Path = Path("/etc/autoreg/keys/controller_known_hosts")
    listen_ports: tuple[int, ...] = ()
    forward: str = "localhost:22"
    keepalive_interval: float = 5.0
    keepalive_count: int = 3
    retry_initial: float = 1.0
    retry_max: float = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A proxy node through which a cluster's nodes are reached (``[cluster:NAME]``)."""

    cluster: str
    host: str
    port: int = 22
    user: str = "root"
    fingerprint: str = ""
    key_type: str = "ssh-ed25519"


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    path: Path | None = None
    state_dir: Path = Path("/var/lib/autoreg")
    keys_dir: Path = Path("/etc/autoreg/keys")
    log_level: str = "info"
    interfaces: tuple[str, ...] = ()
    profile_ref: str = "eucalyptus"
    transport: str = "auto"
    store: str = "sqlite"
    etcd: EtcdConfig = dataclasses.field(default_factory=EtcdConfig)
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    controller: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)
    callback: CallbackConfig = dataclasses.field(default_factory=CallbackConfig)
    proxies: Mapping[str, ProxyConfig] = dataclasses.field(default_factory=dict)
    profile: Profile = dataclasses.field(default_factory=lambda: load_profile("eucalyptus"))

    def proxy_for(self, cluster: str | None) -> ProxyConfig | None:
        """The proxy node for ``cluster`` (``[cluster:*]`` applies to every node)."""
        return self.proxies.get(cluster or "") or self.proxies.get("*")

    @property
    def db_path(self) -> Path:
        return self.state_dir / "autoreg.db"

    @property
    def controller_key(self) -> Path:
        return self.keys_dir / "controller_ed25519"


def _opt_str(value: str) -> str | None:
    return value.strip() or None


def _opt_path(value: str) -> Path | None:
    return Path(value.strip()) if value.strip() else None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("want yes or no")


def _positive_float(value: str) -> float:
    number = float(value.strip().removesuffix("s"))
    if not number > 0:
        raise ValueError("must be positive")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("must be 1-65535")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _port_range(value: str) -> tuple[int, int]:
    low, sep, high = value.strip().partition("-")
    if not sep:
        raise ValueError("want FIRST-LAST, e.g. 20000-29999")
    first, last = _port(low), _port(high)
    if first > last:
        raise ValueError("the first port is above the last")
    return first, last


def _ports(value: str) -> tuple[int, ...]:
    return tuple(_port(p) for p in _words(value))


def _host_port(value: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("want HOST:PORT")
    _port(port)
    return value.strip()


def _transport(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in ("auto", "zeroconf", "avahi"):
        raise ValueError("want auto, zeroconf or avahi")
    return lowered


def _store(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in STORES:
        raise ValueError("want " + " or ".join(STORES))
    return lowered


def _endpoints(value: str) -> tuple[str, ...]:
    """``https://host:2379`` URLs (port 2379 when left out), normalised."""
    out = []
    for word in _words(value):
        scheme, sep, rest = word.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise ValueError(f"{word!r}: want a URL such as https://etcd1.example:2379")
        hostport = rest.rstrip("/")
        if "/" in hostport or "@" in hostport or "?" in hostport or "#" in hostport:
            raise ValueError(f"{word!r}: a client URL has no path, user or query")
        if hostport.startswith("["):  # [IPv6]:port
            host, _, tail = hostport[1:].partition("]")
            port = tail.removeprefix(":") or "2379"
            ipaddress.IPv6Address(host)  # ValueError names it
            host = f"[{host}]"
        else:
            host, _, port = hostport.partition(":")
            port = port or "2379"
        plain = host.strip("[]").replace(":", "") if host.startswith("[") else host
        if not plain or not all(c.isascii() and (c.isalnum() or c in ".-") for c in plain):
            raise ValueError(f"{word!r}: no usable host name")
        try:
            number = _port(port)
        except ValueError as exc:
            raise ValueError(f"{word!r}: port {port!r} {exc}") from exc
        out.append(f"{scheme.lower()}://{host}:{number}")
    if not out:
        raise ValueError("want at least one URL, e.g. https://etcd1.example:2379")
    return tuple(out)


def _etcd_prefix(value: str) -> str:
    prefix = value.strip()
    if not (prefix.startswith("/") and prefix.endswith("/")) or len(prefix) > 200:
        raise ValueError("want a key prefix such as /autoreg/ (starts and ends with /)")
    if not all(33 <= ord(c) < 127 for c in prefix):
        raise ValueError("printable ASCII only, no spaces")
    return prefix


def _lease_ttl(value: str) -> float:
    seconds = parse_duration(value)
    if not 10 <= seconds <= 3600:
        raise ValueError(
            "want 10 s to 1 h (a registrar that loses etcd stops acting "
            "6 s before its lease can run out)"
        )
    return seconds


def _etcd_timeout(value: str) -> float:
    seconds = _positive_float(value)
    if seconds > 60:
        raise ValueError("at most 60 s")
    return seconds


def _trust(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in TRUST_POLICIES:
        raise ValueError("want " + ", ".join(TRUST_POLICIES))
    return lowered


def _log_level(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("want debug, info, warning or error")
    return lowered


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for word in _words(value):
        try:
            out.append(ipaddress.ip_network(word, strict=False))
        except ValueError as exc:
            raise ValueError(f"{word!r} is not a network (e.g. 127.0.0.0/8 or ::1/128)") from exc
    return tuple(out)


def _words(value: str) -> tuple[str, ...]:
    return tuple(w for w in value.replace(",", " ").split() if w)


Parser = Callable[[str], Any]

# section -> key -> (dataclass field name, parser)
_SCHEMA: Final[Mapping[str, Mapping[str, tuple[str, Parser]]]] = {
    "autoreg": {
        "state_dir": ("state_dir", Path),
        "keys_dir": ("keys_dir", Path),
        "log_level": ("log_level", _log_level),
        "interfaces": ("interfaces", _words),
        "profile": ("profile_ref", str.strip),
        "transport": ("transport", _transport),
        "store": ("store", _store),
        "etcd_endpoints": ("etcd_endpoints", _endpoints),
        "etcd_ca": ("etcd_ca", _opt_path),
        "etcd_cert": ("etcd_cert", _opt_path),
        "etcd_key": ("etcd_key", _opt_path),
        "etcd_prefix": ("etcd_prefix", _etcd_prefix),
        "etcd_timeout": ("etcd_timeout", _etcd_timeout),
        "etcd_lease_ttl": ("etcd_lease_ttl", _lease_ttl),
    },
    "node": {
        "role": ("role", _opt_str),
        "cluster": ("cluster", _opt_str),
        "id": ("node_id", _opt_str),
        "name": ("name", _opt_str),
        "interface": ("interface", _opt_str),
        "address": ("address", _opt_str),
        "ssh_port": ("ssh_port", _port),
        "host_key": ("host_key", Path),
        "receipt_path": ("receipt_path", Path),
        "registered_when": ("registered_when", _opt_path),
        "poll_interval": ("poll_interval", _positive_float),
        "probe": ("probe", _bool),
        "token": ("token", _opt_str),
        "token_file": ("token_file", _opt_path),
        "registrar": ("registrar", parse_registrar_url),
        "registrar_fingerprint": ("registrar_fingerprint", parse_pin),
    },
    "controller": {
        "role": ("role", _opt_str),
        "cluster": ("cluster", _opt_str),
        "hooks_dir": ("hooks_dir", Path),
        "hook_timeout": ("hook_timeout", _positive_float),
        "credentials_dir": ("credentials_dir", Path),
        "ssh_user": ("ssh_user", str.strip),
        "connect_timeout": ("connect_timeout", _positive_float),
        "max_attempts": ("max_attempts", _positive_int),
        "retry_initial": ("retry_initial", _positive_float),
        "retry_max": ("retry_max", _positive_float),
        "node_receipt_path": ("node_receipt_path", str.strip),
        "resume_interrupted": ("resume_interrupted", _bool),
        "announce_self": ("announce_self", _bool),
        "max_parallel": ("max_parallel", _positive_int),
        "callback_user": ("callback_user", str.strip),
        "tunnel_ports": ("tunnel_ports", _port_range),
        "tunnel_ports_per_node": ("tunnel_ports_per_node", _positive_int),
        "callback_authorized_keys": ("callback_authorized_keys", Path),
        "sshd_host_key": ("sshd_host_key", Path),
        "allow_addresses": ("allow_addresses", _networks),
        "trust": ("trust", _trust),
        "max_pending": ("max_pending", _positive_int),
        "signature_window": ("signature_window", _positive_float),
        "max_probes": ("max_probes", _positive_int),
        "max_nodes": ("max_nodes", _positive_int),
        "events_keep": ("events_keep", _positive_int),
        "events_max_age": ("events_max_age", parse_duration),
        "listen": ("listen", parse_listen),
        "listen_rate": ("listen_rate", parse_rate),
    },
    "callback": {
        "controller": ("controller", _opt_str),
        "port": ("port", _port),
        "user": ("user", str.strip),
        "key": ("key", Path),
        "known_hosts": ("known_hosts", Path),
        "listen_ports": ("listen_ports", _ports),
        "forward": ("forward", _host_port),
        "keepalive_interval": ("keepalive_interval", _positive_float),
        "keepalive_count": ("keepalive_count", _positive_int),
        "retry_initial": ("retry_initial", _positive_float),
        "retry_max": ("retry_max", _positive_float),
    },
}

CLUSTER_SECTION_PREFIX: Final = "cluster:"
_PROXY_KEYS: Final = frozenset(
    {"proxy", "proxy_port", "proxy_user", "proxy_fingerprint", "proxy_key_type"}
)


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path`` None means ``$AUTOREG_CONFIG`` or the default path, which may be
    absent (defaults apply); an explicitly named file must exist.  Files in
    ``<path>.d/*.conf`` are read after it, in name order, each overriding what
    came before (packages and install media drop their settings there, so the
    main file stays the admin's).  ``overrides`` maps ``section.key`` to a value
    (from command-line flags; None = not given).
    """
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("AUTOREG_CONFIG"))  # empty: not set
    if path is None:
        path = Path(env.get("AUTOREG_CONFIG") or DEFAULT_CONFIG_PATH)
    values: dict[str, dict[str, tuple[str, str]]] = {section: {} for section in _SCHEMA}
    role_sections: dict[str, dict[str, str]] = {}  # [role:…] and [cluster:…]
    used_path: Path | None = None
    if path.exists() or explicit:
        _read_file(path, values, role_sections)
        used_path = path
    dropins = path.with_name(path.name + ".d")
    if dropins.is_dir():
        for dropin in sorted(dropins.glob("*.conf")):
            _read_file(dropin, values, role_sections)
            used_path = used_path or dropin
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set(values, dotted, env[var], source=f"environment {var}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(values, dotted, value, source=f"option for {dotted}")
    return _build(values, role_sections, used_path)


_Values = dict[str, dict[str, tuple[str, str]]]  # section -> key -> (raw value, where from)


def _read_file(path: Path, values: _Values, role_sections: dict[str, dict[str, str]]) -> None:
    parser = configparser.ConfigParser(
        interpolation=None, empty_lines_in_values=False, inline_comment_prefixes=("#", ";")
    )
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"not a valid INI file: {str(exc).splitlines()[0]}", source=str(path)
        ) from exc
    for section in parser.sections():
        if section.startswith((ROLE_SECTION_PREFIX, CLUSTER_SECTION_PREFIX)):
            role_sections[section] = dict(parser[section])
            continue
        if section not in _SCHEMA:
            known = ", ".join(f"[{s}]" for s in _SCHEMA)
            raise ConfigError(
                f"unknown section [{section}]; known: {known}, [role:NAME]", source=str(path)
            )
        for key, value in parser[section].items():
            _set(values, f"{section}.{key}", value, source=f"{path} [{section}]")


def _set(values: _Values, dotted: str, value: str, *, source: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in _SCHEMA or key not in _SCHEMA[section]:
        known = ", ".join(sorted(_SCHEMA.get(section, {})))
        raise ConfigError(
            f"unknown key {key!r}" + (f"; known: {known}" if known else ""), source=source
        )
    values[section][key] = (value, source)


def _build(
    values: _Values,
    role_sections: Mapping[str, Mapping[str, str]],
    path: Path | None,
) -> Config:
    parsed: dict[str, dict[str, Any]] = {}
    for section, keys in values.items():
        parsed[section] = {}
        for key, (raw, source) in keys.items():
            field, parse = _SCHEMA[section][key]
            try:
                parsed[section][field] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{key} = {raw!r}: {exc}", source=source) from exc
    top = parsed["autoreg"]
    etcd = EtcdConfig(
        **{k.removeprefix("etcd_"): top.pop(k) for k in list(top) if k.startswith("etcd_")}
    )
    profile = load_profile(
        top.get("profile_ref", "eucalyptus"),
        {s: v for s, v in role_sections.items() if s.startswith(ROLE_SECTION_PREFIX)},
        overrides_source=str(path or "configuration"),
    )
    node = NodeConfig(**parsed["node"])
    controller = ControllerConfig(**parsed["controller"])
    callback = CallbackConfig(**parsed["callback"])
    proxies = _proxies(
        {s: v for s, v in role_sections.items() if s.startswith(CLUSTER_SECTION_PREFIX)},
        str(path or "configuration"),
    )
    config = Config(
        path=path,
        node=node,
        controller=controller,
        callback=callback,
        proxies=proxies,
        profile=profile,
        etcd=etcd,
        **top,
    )
    sources = {f"{s}.{k}": where for s, keys in values.items() for k, (_, where) in keys.items()}
    _cross_check(config, sources)
    return config


def _proxies(sections: Mapping[str, Mapping[str, str]], where: str) -> dict[str, ProxyConfig]:
    from .protocol import check_fingerprint, check_key_type  # the codec's own validators

    out: dict[str, ProxyConfig] = {}
    for section, values in sections.items():
        cluster = section[len(CLUSTER_SECTION_PREFIX) :].strip()
        source = f"{where} [{section}]"
        unknown = set(values) - _PROXY_KEYS
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(_PROXY_KEYS))}",
                source=source,
            )
        if not values.get("proxy", "").strip():
            raise ConfigError("proxy = HOST is required", source=source)
        try:
            port = _port(values.get("proxy_port", "22"))
        except ValueError as exc:
            raise ConfigError(f"proxy_port: {exc}", source=source) from exc
        proxy = ProxyConfig(
            cluster=cluster,
            host=values["proxy"].strip(),
            port=port,
            user=values.get("proxy_user", "root").strip(),
            fingerprint=values.get("proxy_fingerprint", "").strip(),
            key_type=values.get("proxy_key_type", "ssh-ed25519").strip(),
        )
        # The proxy's host key is pinned exactly like a node's announced one.
        try:
            check_fingerprint(proxy.fingerprint)
        except AnnouncementError as exc:
            raise ConfigError(
                f"proxy_fingerprint: {exc.reason} (it is required: the proxy's host key, "
                "as `ssh-keygen -lf` prints it)",
                source=source,
            ) from exc
        try:
            check_key_type(proxy.key_type)
        except AnnouncementError as exc:
            raise ConfigError(f"proxy_key_type: {exc.reason}", source=source) from exc
        out[cluster] = proxy
    return out


def _cross_check(config: Config, sources: Mapping[str, str] | None = None) -> None:
    where = str(config.path or "configuration")

    def source(section: str, key: str) -> str:  # where a value came from: file, env, flag
        return (sources or {}).get(f"{section}.{key}", f"{where} [{section}]")

    _check_node_fields(config, source)
    unpaired = registrar_pair_problem(config.node.registrar, config.node.registrar_fingerprint)
    if unpaired:
        raise ConfigError(unpaired, source=source("node", "registrar"))
    for section, role, cluster in (
        ("node", config.node.role, config.node.cluster),
        ("controller", config.controller.role, config.controller.cluster),
    ):
        if role is None:
            continue
        spec = config.profile.role(role)
        if spec is None:
            raise ConfigError(
                f"role {role!r} is not in profile {config.profile.name!r} "
                f"(roles: {', '.join(sorted(config.profile.roles))})",
                source=source(section, "role"),
            )
        effective_cluster = cluster or (config.node.cluster if section == "controller" else None)
        if spec.has_cluster and not effective_cluster:
            raise ConfigError(
                f"role {role!r} belongs to a cluster: set cluster", source=source(section, "role")
            )
        if section == "node" and cluster and not spec.has_cluster:
            raise ConfigError(
                f"role {role!r} has no cluster in profile {config.profile.name!r}: "
                f"drop cluster {cluster!r}",
                source=source(section, "cluster"),
            )
    if config.controller.role and not config.profile.roles_registered_by(config.controller.role):
        raise ConfigError(
            f"role {config.controller.role!r} registers nothing in profile "
            f"{config.profile.name!r}; registrar roles: "
            f"{', '.join(config.profile.registrar_roles())}",
            source=source("controller", "role"),
        )
    _check_etcd(config, source)
    if config.controller.retry_initial > config.controller.retry_max:
        raise ConfigError("retry_initial is larger than retry_max", source=f"{where} [controller]")


def _check_etcd(config: Config, source: Callable[[str, str], str]) -> None:
    etcd = config.etcd
    if config.store == "etcd" and not etcd.endpoints:
        raise ConfigError(
            "store = etcd needs etcd_endpoints (e.g. https://etcd1.example:2379, …)",
            source=source("autoreg", "store"),
        )
    if (etcd.cert is None) != (etcd.key is None):
        given, missing = ("etcd_cert", "etcd_key")
        if etcd.cert is None:
            given, missing = missing, given
        raise ConfigError(
            f"{given} without {missing}: a client certificate needs both",
            source=source("autoreg", given),
        )
    plain = [e for e in etcd.endpoints if e.startswith("http://")]
    if plain and (etcd.ca or etcd.cert):
        raise ConfigError(
            f"TLS options given but {plain[0]} is plain http: use https:// endpoints",
            source=source("autoreg", "etcd_endpoints"),
        )


def _check_node_fields(config: Config, source: Callable[[str, str], str]) -> None:
    """What this node announces, checked as the codec will (the rule stated, the source named)."""
    from .protocol import check_cluster, check_name, check_node_id

    node = config.node
    for key, check, value in (
        ("id", check_node_id, node.node_id),
        ("name", check_name, node.name),
        ("cluster", check_cluster, node.cluster),
    ):
        if value is None:
            continue
        try:
            check(value)
        except AnnouncementError as exc:
            where = source("node", key)
            message = exc.reason if where.startswith("option for ") else f"{key}: {exc.reason}"
            raise ConfigError(message, source=where) from exc
