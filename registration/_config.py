"""Typed, immutable configuration, validated on load.

Precedence: command-line flags > environment > configuration file > defaults.
The file is INI (``/etc/autoreg/autoreg.conf``) with sections ``[autoreg]``,
``[node]``, ``[controller]`` and optional ``[role:NAME]`` sections that
override the chosen role profile.  Unknown sections and keys are errors.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ._exceptions import ConfigError
from ._profile import ROLE_SECTION_PREFIX, Profile, load_profile

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_OVERRIDES",
    "Config",
    "ControllerConfig",
    "NodeConfig",
    "load_config",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/autoreg/autoreg.conf")

#: Environment variables that override single settings (``section.key``).
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "AUTOREG_STATE_DIR": "autoreg.state_dir",
    "AUTOREG_KEYS_DIR": "autoreg.keys_dir",
    "AUTOREG_LOG_LEVEL": "autoreg.log_level",
    "AUTOREG_INTERFACES": "autoreg.interfaces",
    "AUTOREG_PROFILE": "autoreg.profile",
    "AUTOREG_HOOKS_DIR": "controller.hooks_dir",
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


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    path: Path | None = None
    state_dir: Path = Path("/var/lib/autoreg")
    keys_dir: Path = Path("/etc/autoreg/keys")
    log_level: str = "info"
    interfaces: tuple[str, ...] = ()
    profile_ref: str = "eucalyptus"
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    controller: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)
    profile: Profile = dataclasses.field(default_factory=lambda: load_profile("eucalyptus"))

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


def _log_level(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("want debug, info, warning or error")
    return lowered


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
    },
}


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path`` None means ``$AUTOREG_CONFIG`` or the default path, which may be
    absent (defaults apply); an explicitly named file must exist.  ``overrides``
    maps ``section.key`` to a value (from command-line flags; None = not given).
    """
    env = os.environ if env is None else env
    explicit = path is not None or "AUTOREG_CONFIG" in env
    if path is None:
        path = Path(env.get("AUTOREG_CONFIG", str(DEFAULT_CONFIG_PATH)))
    values: dict[str, dict[str, tuple[str, str]]] = {section: {} for section in _SCHEMA}
    role_sections: dict[str, dict[str, str]] = {}
    used_path: Path | None = None
    if path.exists() or explicit:
        _read_file(path, values, role_sections)
        used_path = path
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
        if section.startswith(ROLE_SECTION_PREFIX):
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
    profile = load_profile(
        top.get("profile_ref", "eucalyptus"),
        role_sections,
        overrides_source=str(path or "configuration"),
    )
    node = NodeConfig(**parsed["node"])
    controller = ControllerConfig(**parsed["controller"])
    config = Config(path=path, node=node, controller=controller, profile=profile, **top)
    _cross_check(config)
    return config


def _cross_check(config: Config) -> None:
    where = str(config.path or "configuration")
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
                source=f"{where} [{section}]",
            )
        effective_cluster = cluster or (config.node.cluster if section == "controller" else None)
        if spec.has_cluster and not effective_cluster:
            raise ConfigError(
                f"role {role!r} belongs to a cluster: set cluster", source=f"{where} [{section}]"
            )
    if config.controller.role and not config.profile.roles_registered_by(config.controller.role):
        raise ConfigError(
            f"role {config.controller.role!r} registers nothing in profile "
            f"{config.profile.name!r}; registrar roles: "
            f"{', '.join(config.profile.registrar_roles())}",
            source=f"{where} [controller]",
        )
    if config.controller.retry_initial > config.controller.retry_max:
        raise ConfigError("retry_initial is larger than retry_max", source=f"{where} [controller]")
