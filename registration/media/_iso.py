"""cloud-init NoCloud seed images: ISO 9660 with Joliet and Rock Ridge (pycdlib).

cloud-init finds a NoCloud seed by the volume label ``cidata`` and reads
``user-data`` and ``meta-data`` (``network-config`` optional) from its root.
Lower-case names need Rock Ridge or Joliet; both are written, so every reader
(Linux's isofs, cloud-init, xorriso, Windows) sees the real names.
:func:`inspect_seed` says precisely what is wrong with a medium, because "not a
valid seed" is the error cloud-init users cannot act on.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pycdlib
import yaml

from .._exceptions import AutoregError

__all__ = ["SEED_LABEL", "MediumError", "SeedReport", "inspect_seed", "write_seed_iso"]

SEED_LABEL: Final = "cidata"
REQUIRED: Final = ("user-data", "meta-data")


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

    @property
    def ok(self) -> bool:
        return not self.problems


def _iso_name(name: str) -> str:
    """An ISO 9660 level-1 name for the plain file (readers use Rock Ridge/Joliet)."""
    stem = name.upper().replace("-", "")[:8]
    return f"/{stem}.;1"


def write_seed_iso(files: Mapping[str, bytes], path: Path) -> None:
    """Write the seed atomically (temporary file in the same directory, then rename)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for name, data in files.items():
        iso.add_fp(
            io.BytesIO(data), len(data), _iso_name(name), rr_name=name, joliet_path=f"/{name}"
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        iso.write(str(tmp))
        os.chmod(tmp, 0o600)  # it may hold a node's callback key
        os.replace(tmp, path)
    except OSError as exc:
        raise MediumError(f"{path}: cannot write the medium: {exc.strerror}") from exc
    finally:
        iso.close()
        tmp.unlink(missing_ok=True)


def inspect_seed(path: Path) -> SeedReport:
    """Read a medium back and check it is a usable NoCloud seed; never raises on content."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as exc:
        raise MediumError(f"{path}: not an ISO 9660 image ({exc})") from exc
    try:
        label = iso.pvd.volume_identifier.decode("ascii", "replace").strip()
        contents = _read_root(iso)
    finally:
        iso.close()
    problems: list[str] = []
    if label != SEED_LABEL:
        problems.append(f"volume label is {label!r}; cloud-init looks for {SEED_LABEL!r}")
    for name in REQUIRED:
        if name not in contents:
            problems.append(f"{name} is missing from the root directory")
    user = _yaml(contents, "user-data", problems)
    if "user-data" in contents and not contents["user-data"].startswith(b"#cloud-config"):
        problems.append(
            "user-data does not start with '#cloud-config' (cloud-init would treat "
            "it as a script or ignore it)"
        )
    meta = _yaml(contents, "meta-data", problems)
    if isinstance(meta, dict) and not meta.get("instance-id"):
        problems.append(
            "meta-data has no instance-id (cloud-init would not run per-instance modules)"
        )
    network = _yaml(contents, "network-config", problems) if "network-config" in contents else None
    if network is not None and not (isinstance(network, dict) and network.get("version") in (1, 2)):
        problems.append("network-config has no 'version: 1' or 'version: 2'")
    role = _autoreg_role(user)
    if isinstance(user, dict) and role is None:
        problems.append("user-data does not write /etc/autoreg/autoreg.conf with a [node] role")
    return SeedReport(
        path=str(path),
        label=label,
        files={k: len(v) for k, v in sorted(contents.items())},
        problems=problems,
        instance_id=str(meta.get("instance-id")) if isinstance(meta, dict) else None,
        hostname=str(user.get("hostname")) if isinstance(user, dict) else None,
        autoreg_role=role,
    )


def _read_root(iso: pycdlib.PyCdlib) -> dict[str, bytes]:
    """Files of the root directory by their Rock Ridge (else Joliet, else ISO) names."""
    out: dict[str, bytes] = {}
    for facade, kind in (
        (iso.get_rock_ridge_facade, "rr"),
        (iso.get_joliet_facade, "joliet"),
        (iso.get_iso9660_facade, "iso"),
    ):
        try:
            entries = list(facade().list_children("/"))
        except pycdlib.pycdlibexception.PyCdlibException:
            continue
        for entry in entries:
            if entry is None or entry.is_dir() or entry.is_dot() or entry.is_dotdot():
                continue
            name = _entry_name(entry, kind)
            if name in out:
                continue
            buf = io.BytesIO()
            full = f"/{name}" if kind != "iso" else f"/{entry.file_identifier().decode()}"
            facade().get_file_from_iso_fp(buf, full)
            out[name] = buf.getvalue()
        if out:
            break
    return out


def _entry_name(entry: Any, kind: str) -> str:
    if kind == "rr" and entry.rock_ridge is not None:
        return str(entry.rock_ridge.name().decode())
    if kind == "joliet":
        return str(entry.file_identifier().decode("utf-16_be"))
    return str(entry.file_identifier().decode()).split(";")[0].rstrip(".").lower()


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


def _autoreg_role(user: Any) -> str | None:
    if not isinstance(user, dict):
        return None
    for item in user.get("write_files") or []:
        if isinstance(item, dict) and item.get("path") == "/etc/autoreg/autoreg.conf":
            for line in str(item.get("content", "")).splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "role" and value.strip():
                    return value.strip()
    return None
