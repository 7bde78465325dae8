"""The node agent as one file: a zipapp of autoreg's node side and its libraries.

``autoreg bootstrap`` copies it to machines that have python3 and nothing else.
It is built from what is installed here, whichever way that was (the .deb with
Debian's libraries, or a virtualenv): a child interpreter imports the node side
(``registration._agent``) and reports every non-standard top-level module it
loaded; each is copied into the archive as Python source.  Compiled accelerators
(``.so``) are left out, since they are built for this machine's Python and
libc.  The libraries the node needs (zeroconf, ifaddr, aiohttp and its
helpers) fall back to their pure-Python code without them.

The archive is reproducible: the same installed files give the same bytes,
hence the same SHA-256, which names the file in the remote cache
(``/var/cache/autoreg/autoreg-VERSION-HASH.pyz``).  A new version, or any
changed file, is a new name, and is copied again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ._exceptions import AutoregError
from ._version import __version__

__all__ = ["Bundle", "build_bundle", "node_libraries"]

#: What the child interpreter runs: import the node side, name every module it loaded.
_CLOSURE: Final = """
import json, sys
from registration import _agent
_agent.import_node_side()
std = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
found = {}
for name in list(sys.modules):
    top = name.partition(".")[0]
    module = sys.modules.get(top)
    path = getattr(module, "__file__", None)
    if top in std or top in found or top.startswith("__") or not path:
        continue
    found[top] = path
print(json.dumps(found))
"""
#: Top-level modules of the interpreter's own set-up, never part of the bundle.
_NOT_LIBRARIES: Final = frozenset({"sitecustomize", "usercustomize", "_distutils_hack"})
#: Files left out: compiled code (this machine's ABI), its sources, caches, type stubs.
_SKIP_SUFFIXES: Final = frozenset({".so", ".pyd", ".c", ".h", ".pyx", ".pxd", ".pyi", ".pyc"})
_ENTRY: Final = "from registration._agent import main\n\nmain()\n"
#: A fixed timestamp for every member (zip's epoch), so the archive is reproducible.
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
#: Seconds the child interpreter may take to import the node side.
CLOSURE_TIMEOUT: Final = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Bundle:
    data: bytes = dataclasses.field(repr=False)
    sha256: str
    version: str
    libraries: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"autoreg-{self.version}-{self.sha256[:16]}.pyz"


def node_libraries(python: str = sys.executable) -> dict[str, Path]:
    """Top-level module -> its ``__init__.py`` or module file, as the node side loads them."""
    try:
        done = subprocess.run(
            [python, "-P", "-c", _CLOSURE],
            capture_output=True,
            timeout=CLOSURE_TIMEOUT,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AutoregError(f"cannot list the node side's libraries with {python}: {exc}") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise AutoregError(
            f"the node side does not import here ({python}): {' '.join(tail) or 'no output'}"
        )
    found = json.loads(done.stdout)
    return {name: Path(path) for name, path in found.items() if name not in _NOT_LIBRARIES}


def _members(name: str, path: Path) -> Iterator[tuple[str, Path]]:
    """(name in the archive, file) for one top-level module or package."""
    if path.name != "__init__.py":
        if path.suffix != ".py":
            raise AutoregError(
                f"{name} is compiled only ({path}): the bundle needs pure-Python libraries"
            )
        yield path.name, path
        return
    root = path.parent
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if (
            file.is_dir()
            or "__pycache__" in relative.parts
            or file.suffix in _SKIP_SUFFIXES
            or ".so" in file.suffixes
        ):
            continue
        yield f"{name}/{relative.as_posix()}", file


def build_bundle(python: str = sys.executable) -> Bundle:
    """The zipapp of this installation's node side (reproducible: same files, same bytes)."""
    libraries = node_libraries(python)
    if "registration" not in libraries:
        raise AutoregError("the node side was not found in its own closure (broken install?)")
    members = sorted(m for name, path in libraries.items() for m in _members(name, path))
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for arcname, content in [("__main__.py", _ENTRY.encode())] + [
            (arcname, file.read_bytes()) for arcname, file in members
        ]:
            info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content, compresslevel=6)
    data = buffer.getvalue()
    return Bundle(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        version=_version_of(libraries["registration"]),
        libraries=tuple(sorted(libraries)),
    )


def _version_of(init: Path) -> str:
    """The version of the package that is bundled (it may differ from this process's)."""
    text = (init.parent / "_version.py").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return __version__
