"""cloud-init NoCloud seed images: ISO 9660 with Joliet and Rock Ridge (pycdlib).

cloud-init finds a NoCloud seed by the volume label ``cidata`` and reads
``user-data`` and ``meta-data`` (``network-config`` optional) from its root.
Lower-case names need Rock Ridge or Joliet; both are written, so every reader
(Linux's isofs, cloud-init, xorriso, Windows) sees the real names.
:func:`inspect_seed` says precisely what is wrong with a medium, because "not a
valid seed" is the error cloud-init users cannot act on.
"""

from __future__ import annotations

import configparser
import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pycdlib
import yaml

from .._exceptions import AutoregError
from .._files import write_atomic

__all__ = ["SEED_LABEL", "MediumError", "SeedReport", "inspect_seed", "write_seed_iso"]

SEED_LABEL: Final = "cidata"
REQUIRED: Final = ("user-data", "meta-data")
#: Where a medium's autoreg configuration may go (the drop-in, or the main file).
CONFIG_PATHS: Final = ("/etc/autoreg/autoreg.conf.d/", "/etc/autoreg/autoreg.conf")


class MediumError(AutoregError):
    """An install medium cannot be written or read."""

    exit_code = 65  # EX_DATAERR


@dataclasses.dataclass(frozen=True, slots=True)
class SeedReport:
    path: str
    label: str
    files: dict[str, int]
    problems: list[str]
    instance_id: str | None = None
    hostname: str | None = None
    autoreg_role: str | None = None
    autoreg_cluster: str | None = None
    node_id: str | None = None
    calls_back: bool = False
    secrets: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _iso_name(name: str) -> str:
    """An ISO 9660 level-1 name for the plain file (readers use Rock Ridge/Joliet)."""
    stem = name.upper().replace("-", "")[:8]
    return f"/{stem}.;1"


def write_seed_iso(files: Mapping[str, bytes], path: Path) -> None:
    """Write the seed atomically, private (0600) from its first byte: it may hold a key."""
    names = [_iso_name(name) for name in files]
    if len(set(names)) != len(names):
        raise MediumError(f"file names collide on ISO 9660: {sorted(files)}")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    try:
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data), len(data), _iso_name(name), rr_name=name, joliet_path=f"/{name}"
            )
        image = io.BytesIO()  # a seed is a few kilobytes
        iso.write_fp(image)
        try:
            write_atomic(path.absolute(), image.getvalue(), mode=0o600)  # may hold a key
        except OSError as exc:
            raise MediumError(f"{path}: cannot write the medium: {exc.strerror}") from exc
    finally:
        iso.close()


def inspect_seed(path: Path) -> SeedReport:
    """Read a medium back and check it is a usable NoCloud seed; never raises on content."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as exc:
        raise MediumError(f"{path}: not an ISO 9660 image ({exc})") from exc
    try:
        label = iso.pvd.volume_identifier.decode("ascii", "replace").strip()
        contents, plain_names = _read_root(iso)
    finally:
        iso.close()
    problems: list[str] = []
    if label.lower() != SEED_LABEL:
        problems.append(
            f"volume label is {label!r}; cloud-init looks for {SEED_LABEL!r} "
            f"(e.g. genisoimage -V {SEED_LABEL})"
        )
    if plain_names:
        problems.append(
            "the image has neither Rock Ridge nor Joliet names, so its files are seen as "
            f"{', '.join(sorted(contents))}: write it with -r/-J (Rock Ridge/Joliet)"
        )
    for name in REQUIRED:
        if name not in contents:
            problems.append(f"{name} is missing from the root directory")
    user = _yaml(contents, "user-data", problems)
    if "user-data" in contents and not contents["user-data"].startswith(b"#cloud-config"):
        problems.append(
            "user-data does not start with '#cloud-config' (cloud-init would treat "
            "it as a script or ignore it)"
        )
    if user is not None and not isinstance(user, dict):
        problems.append(f"user-data is YAML but not a mapping (it is a {type(user).__name__})")
        user = None
    meta = _yaml(contents, "meta-data", problems)
    if "meta-data" in contents and not (isinstance(meta, dict) and meta.get("instance-id")):
        problems.append(
            "meta-data has no instance-id (cloud-init would not run per-instance modules)"
        )
    network = _yaml(contents, "network-config", problems) if "network-config" in contents else None
    if network is not None and not (isinstance(network, dict) and network.get("version") in (1, 2)):
        problems.append("network-config has no 'version: 1' or 'version: 2'")
    conf: configparser.ConfigParser | None = None
    calls_back = False
    secrets: list[str] = []
    if isinstance(user, dict):
        written = _written_files(user, problems)
        conf = _autoreg_config(written, problems)
        token_path: str | None = None
        if conf is not None:
            calls_back = conf.has_section("callback")
            _check_callback(conf, written, problems)
            token_path = _check_token(conf, written, problems)
        secrets = sorted(
            p for p, (content, _) in written.items() if "PRIVATE KEY" in content or p == token_path
        )
        if not _authorized_keys(user):
            problems.append(
                "user-data authorises no key for any user: the controller could not log in "
                "(users: [{name: root, ssh_authorized_keys: [CONTROLLER_KEY]}])"
            )
    return SeedReport(
        path=str(path),
        label=label,
        files={k: len(v) for k, v in sorted(contents.items())},
        problems=problems,
        instance_id=str(meta.get("instance-id")) if isinstance(meta, dict) else None,
        hostname=str(user["hostname"]) if isinstance(user, dict) and "hostname" in user else None,
        autoreg_role=_get(conf, "node", "role"),
        autoreg_cluster=_get(conf, "node", "cluster"),
        node_id=_get(conf, "node", "id"),
        calls_back=calls_back,
        secrets=secrets,
    )


def _read_root(iso: pycdlib.PyCdlib) -> tuple[dict[str, bytes], bool]:
    """Files of the root directory by their Rock Ridge (else Joliet, else ISO) names.

    The flag says the names are plain ISO 9660 ones (upper case, no dashes, 8.3).
    """
    for facade, kind in (
        (iso.get_rock_ridge_facade, "rr"),
        (iso.get_joliet_facade, "joliet"),
        (iso.get_iso9660_facade, "iso"),
    ):
        out: dict[str, bytes] = {}
        try:
            entries = list(facade().list_children("/"))
        except pycdlib.pycdlibexception.PyCdlibException:
            continue
        for entry in entries:
            if entry is None or entry.is_dir() or entry.is_dot() or entry.is_dotdot():
                continue
            name = _entry_name(entry, kind)
            if name is None or name in out:
                continue
            buf = io.BytesIO()
            full = f"/{name}" if kind != "iso" else f"/{entry.file_identifier().decode()}"
            facade().get_file_from_iso_fp(buf, full)
            out[name] = buf.getvalue()
        if out:
            return out, kind == "iso"
    return {}, False


def _entry_name(entry: Any, kind: str) -> str | None:
    if kind == "rr":
        return None if entry.rock_ridge is None else str(entry.rock_ridge.name().decode())
    if kind == "joliet":
        return str(entry.file_identifier().decode("utf-16_be"))
    return str(entry.file_identifier().decode()).split(";")[0].rstrip(".")


def _yaml(contents: Mapping[str, bytes], name: str, problems: list[str]) -> Any:
    if name not in contents:
        return None
    try:
        return yaml.safe_load(contents[name])
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problems.append(f"{name} is not valid YAML{line}: {getattr(exc, 'problem', exc)}")
        return None


def _written_files(user: Mapping[str, Any], problems: list[str]) -> dict[str, tuple[str, str]]:
    """write_files entries: path -> (content, permissions)."""
    out: dict[str, tuple[str, str]] = {}
    for item in user.get("write_files") or []:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            problems.append(f"user-data write_files has an entry without a path: {item!r}")
            continue
        if item.get("encoding") not in (None, "text/plain"):
            problems.append(f"user-data write_files {item['path']}: encoded content not checked")
        mode = item.get("permissions", "0644")
        out[item["path"]] = (
            str(item.get("content", "")),
            mode if isinstance(mode, str) else oct(mode),
        )
    return out


def _autoreg_config(
    written: Mapping[str, tuple[str, str]], problems: list[str]
) -> configparser.ConfigParser | None:
    paths = [p for p in written if p.startswith(CONFIG_PATHS[0]) or p == CONFIG_PATHS[1]]
    if not paths:
        problems.append(
            "user-data writes no autoreg configuration "
            "(/etc/autoreg/autoreg.conf.d/*.conf or /etc/autoreg/autoreg.conf)"
        )
        return None
    conf = configparser.ConfigParser(interpolation=None)
    for path in sorted(paths):
        try:
            conf.read_string(written[path][0], source=path)
        except configparser.Error as exc:
            problems.append(f"{path} on the medium is not a valid INI file: {exc}")
            return None
    if not _get(conf, "node", "role"):
        problems.append(f"{', '.join(sorted(paths))} on the medium sets no [node] role")
    return conf


def _check_token(
    conf: configparser.ConfigParser, written: Mapping[str, tuple[str, str]], problems: list[str]
) -> str | None:
    """The join token file the medium's configuration names, checked; None without one."""
    path = _get(conf, "node", "token_file")
    if path is None:
        return None
    if path not in written:
        problems.append(f"[node] token_file names {path}, which the medium does not write")
        return None
    content, mode = written[path]
    if mode != "0600":
        problems.append(f"the join token {path} is written with mode {mode}: use 0600")
    token_id, dot, secret = content.strip().partition(".")
    if not dot or not token_id or not secret:
        problems.append(f"the join token {path} is not ID.SECRET")
    return path


def _check_callback(
    conf: configparser.ConfigParser, written: Mapping[str, tuple[str, str]], problems: list[str]
) -> None:
    if not conf.has_section("callback"):
        return
    for key in ("controller", "listen_ports"):
        if not _get(conf, "callback", key):
            problems.append(f"[callback] on the medium has no {key}")
    key_path = _get(conf, "callback", "key") or "/etc/autoreg/keys/callback_ed25519"
    if key_path not in written:
        problems.append(f"[callback] names the key {key_path}, which the medium does not write")
    else:
        content, mode = written[key_path]
        bits = _mode(mode)
        if bits is None or bits & 0o077:
            problems.append(f"the callback key {key_path} is written with mode {mode}: use 0600")
        if "PRIVATE KEY" not in content:
            problems.append(f"the callback key {key_path} on the medium is not a private key")
    pin = _get(conf, "callback", "known_hosts") or "/etc/autoreg/keys/controller_known_hosts"
    if pin not in written:
        problems.append(
            f"[callback] names the controller's host-key pin {pin}, which the medium does not "
            "write (autoreg tunnel known-hosts)"
        )


def _mode(text: str) -> int | None:
    try:
        return int(text, 8)
    except ValueError:
        return None


def _authorized_keys(user: Mapping[str, Any]) -> list[str]:
    keys = [k for k in user.get("ssh_authorized_keys") or [] if isinstance(k, str)]
    for entry in user.get("users") or []:
        if isinstance(entry, dict):
            keys += [k for k in entry.get("ssh_authorized_keys") or [] if isinstance(k, str)]
    return keys


def _get(conf: configparser.ConfigParser | None, section: str, key: str) -> str | None:
    if conf is None or not conf.has_option(section, key):
        return None
    return conf.get(section, key).strip() or None
