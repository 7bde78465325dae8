"""Role profiles: which registrar registers which role, uniqueness and ordering.

Roles are configuration, not code.  A profile is a set of ``[role:NAME]``
sections (see ``profiles/eucalyptus.conf``, the shipped example).  Parsing is
strict: unknown keys, unknown roles and impossible combinations are errors.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from ._exceptions import ConfigError

__all__ = ["SHIPPED_PROFILES", "Profile", "RoleSpec", "load_profile", "parse_role_sections"]

Uniqueness = Literal["cloud", "cluster", "none"]
SHIPPED_PROFILES: Final = ("eucalyptus",)
ROLE_SECTION_PREFIX: Final = "role:"
_ROLE_KEYS: Final = frozenset({"cluster", "registered_by", "unique", "requires", "trust"})
_TRUST: Final = ("token", "approve", "open")
_ROLE_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,15}")


@dataclasses.dataclass(frozen=True, slots=True)
class RoleSpec:
    """How one role is registered."""

    name: str
    has_cluster: bool = False
    registered_by: str | None = None
    unique: Uniqueness = "none"
    requires: tuple[str, ...] = ()
    #: token | approve | open for this role; None: the registrar's [controller] trust.
    trust: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A validated set of roles."""

    name: str
    roles: Mapping[str, RoleSpec]

    def role(self, name: str) -> RoleSpec | None:
        return self.roles.get(name)

    def roles_registered_by(self, registrar: str) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles.values() if r.registered_by == registrar)

    def registrar_roles(self) -> tuple[str, ...]:
        return tuple(sorted({r.registered_by for r in self.roles.values() if r.registered_by}))


def load_profile(
    ref: str,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    *,
    overrides_source: str = "configuration",
) -> Profile:
    """Load a shipped profile by name, or a profile file by path, then apply overrides.

    ``overrides`` are ``[role:NAME]`` sections from the main configuration file;
    the keys of a section there override the profile's keys of that role (an empty
    value clears one), and a section for a new name adds a role.
    """
    if "/" in ref:
        path = Path(ref)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read profile: {exc.strerror}", source=str(path)) from exc
        source = str(path)
    elif ref in SHIPPED_PROFILES:
        text = resources.files("registration").joinpath(f"profiles/{ref}.conf").read_text("utf-8")
        source = f"profile {ref}"
    else:
        raise ConfigError(
            f"unknown profile {ref!r}: give a path or one of {', '.join(SHIPPED_PROFILES)}"
        )
    parser = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(str(exc).splitlines()[0], source=source) from exc
    sections: dict[str, Mapping[str, str]] = {}
    for section in parser.sections():
        if not section.startswith(ROLE_SECTION_PREFIX):
            raise ConfigError(f"unexpected section [{section}] in a profile", source=source)
        sections[section] = dict(parser[section])
    sources = dict.fromkeys(sections, source)
    for section, values in (overrides or {}).items():
        sections[section] = {**sections.get(section, {}), **values}
        sources[section] = overrides_source
    return parse_role_sections(ref, sections, source=source, section_sources=sources)


def parse_role_sections(
    name: str,
    sections: Mapping[str, Mapping[str, str]],
    *,
    source: str,
    section_sources: Mapping[str, str] | None = None,
) -> Profile:
    """Validate ``[role:NAME]`` sections; errors name the file each section came from."""
    roles: dict[str, RoleSpec] = {}
    sources: dict[str, str] = {}
    for section, values in sections.items():
        role = section[len(ROLE_SECTION_PREFIX) :].strip()
        sources[role] = (section_sources or {}).get(section, source)
        where = f"{sources[role]} [{section}]"
        if not _ROLE_NAME_RE.fullmatch(role):
            raise ConfigError(f"invalid role name {role!r} (want [a-z][a-z0-9-]*)", source=where)
        unknown = set(values) - _ROLE_KEYS
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_ROLE_KEYS))}",
                source=where,
            )
        unique = values.get("unique", "none").strip() or "none"
        if unique not in ("cloud", "cluster", "none"):
            raise ConfigError(f"unique = {unique!r}: want cloud, cluster or none", source=where)
        trust = values.get("trust", "").strip().lower() or None
        if trust is not None and trust not in _TRUST:
            raise ConfigError(f"trust = {trust!r}: want {', '.join(_TRUST)}", source=where)
        roles[role] = RoleSpec(
            name=role,
            has_cluster=_parse_bool(values.get("cluster", "no"), where, "cluster"),
            registered_by=values.get("registered_by", "").strip() or None,
            unique=unique,  # type: ignore[arg-type]  # checked above
            requires=tuple(r for r in re.split(r"[,\s]+", values.get("requires", "")) if r),
            trust=trust,
        )
    _validate(roles, source, sources)
    return Profile(name=name, roles=roles)


def _validate(roles: Mapping[str, RoleSpec], source: str, sources: Mapping[str, str]) -> None:
    if not roles:
        raise ConfigError("the profile defines no roles", source=source)
    for spec in roles.values():
        where = f"{sources.get(spec.name, source)} [{ROLE_SECTION_PREFIX}{spec.name}]"
        if spec.registered_by is not None and spec.registered_by not in roles:
            raise ConfigError(
                f"registered_by names unknown role {spec.registered_by!r}", source=where
            )
        if spec.registered_by == spec.name:
            raise ConfigError("a role cannot register itself", source=where)
        for req in spec.requires:
            if req not in roles:
                raise ConfigError(f"requires names unknown role {req!r}", source=where)
            if req == spec.name:
                raise ConfigError("a role cannot require itself", source=where)
        if spec.unique == "cluster" and not spec.has_cluster:
            raise ConfigError("unique = cluster needs cluster = yes", source=where)
    # registered_by must form a tree: no cycles.
    for spec in roles.values():
        seen = {spec.name}
        parent = spec.registered_by
        while parent is not None:
            if parent in seen:
                raise ConfigError(f"registered_by forms a cycle through {parent!r}", source=source)
            seen.add(parent)
            parent = roles[parent].registered_by
    _check_requires_acyclic(roles, source)


def _check_requires_acyclic(roles: Mapping[str, RoleSpec], source: str) -> None:
    """Roles that require each other (directly or not) could never be registered."""
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            raise ConfigError(f"requires forms a cycle: {cycle}", source=source)
        if name in done:
            return
        for req in roles[name].requires:
            visit(req, (*path, name))
        done.add(name)

    for name in roles:
        visit(name, ())


def _parse_bool(value: str, where: str, key: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off", ""):
        return False
    raise ConfigError(f"{key} = {value!r}: want yes or no", source=where)
