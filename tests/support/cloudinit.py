"""cloud-init's own code, for validating install media, without installing cloud-init.

Installing Debian's ``cloud-init`` package on the test machine would make it act
at the machine's next boot.  Instead its ``.deb`` is fetched with ``apt-get
download`` into a cache *outside* the checkout and unpacked there with
``dpkg-deb -x``; its Python package then runs on Debian's ``/usr/bin/python3``
with Debian's libraries (``APT_DEPENDENCIES``, installed by ``tools/bootstrap.sh``).

The session fixture :func:`cloud_init` prepares it once per cache (a lock file
serialises concurrent sessions; the unpacked tree appears atomically) with
bounded waits.  Outside CI a missing piece skips the tests that need it, with
the reason; with ``CI`` set it fails them instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .prerequisites import unavailable

__all__ = [
    "APT_DEPENDENCIES",
    "CACHE_DIR",
    "CloudInit",
    "CloudInitUnavailable",
    "cloud_init",
    "ensure_cloud_init",
    "missing_tool",
    "unavailable",
]

#: Where the .deb and its unpacked tree are kept (never inside the checkout).
CACHE_DIR = Path(os.environ.get("AUTOREG_TEST_CACHE", "/var/cache/autoreg-tests")) / "cloud-init"
PYTHON = "/usr/bin/python3"
#: Debian packages cloud-init's schema validator and network code import.
APT_DEPENDENCIES = (
    "python3-yaml",
    "python3-jsonschema",
    "python3-jinja2",
    "python3-configobj",
    "python3-jsonpatch",
    "python3-netifaces",
    "python3-oauthlib",
    "python3-requests",
    "python3-serial",
)
_MODULES = "yaml, jsonschema, jinja2, configobj, jsonpatch, netifaces, oauthlib, requests, serial"
DOWNLOAD_TIMEOUT = 180.0
LOCK_TIMEOUT = 300.0


class CloudInitUnavailable(RuntimeError):
    """cloud-init's code cannot be prepared here; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class CloudInit:
    """An unpacked cloud-init, run with Debian's python3."""

    root: Path
    version: str

    @property
    def pythonpath(self) -> str:
        return str(self.root / "usr/lib/python3/dist-packages")

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": self.pythonpath,
        }

    def argv(self, *args: str) -> list[str]:
        return [PYTHON, str(self.root / "usr/bin/cloud-init"), *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )

    def schema(self, path: Path) -> subprocess.CompletedProcess[str]:
        """``cloud-init schema --config-file PATH``: exit 0 and "Valid cloud-config" if valid."""
        return self.run("schema", "--config-file", str(path))

    def python(
        self, code: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with cloud-init's package importable (e.g. its network renderers)."""
        return subprocess.run(
            [PYTHON, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )


def missing_tool(name: str, package: str) -> str | None:
    """None if ``name`` is on PATH, else the reason (which Debian package provides it)."""
    if shutil.which(name):
        return None
    return f"{name} is not installed (Debian package {package}; tools/bootstrap.sh installs it)"


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float) -> str:
    try:
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CloudInitUnavailable(f"{' '.join(argv)}: {exc}") from exc
    if result.returncode != 0:
        raise CloudInitUnavailable(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-500:]}"
        )
    return result.stdout


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    with path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CloudInitUnavailable(f"{path} stayed locked for {timeout:g}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download(cache: Path) -> Path:
    """The cached cloud-init .deb, fetched with `apt-get download` when there is none."""
    debs = sorted(cache.glob("cloud-init_*.deb"))
    if debs:
        return debs[-1]
    if shutil.which("apt-get") is None:
        raise CloudInitUnavailable("no apt-get: cannot fetch Debian's cloud-init package")
    try:
        _run(["apt-get", "download", "-q", "cloud-init"], cwd=cache, timeout=DOWNLOAD_TIMEOUT)
    except CloudInitUnavailable:
        if os.geteuid() != 0:
            raise
        # A machine whose package lists were never fetched: fetch them once, then retry.
        _run(["apt-get", "update", "-q"], timeout=DOWNLOAD_TIMEOUT)
        _run(["apt-get", "download", "-q", "cloud-init"], cwd=cache, timeout=DOWNLOAD_TIMEOUT)
    debs = sorted(cache.glob("cloud-init_*.deb"))
    if not debs:
        raise CloudInitUnavailable(f"apt-get download cloud-init left no .deb in {cache}")
    return debs[-1]


def ensure_cloud_init(cache: Path = CACHE_DIR) -> CloudInit:
    """Fetch (once) and unpack (once) cloud-init into ``cache``; never installs it."""
    for tool, package in (("dpkg-deb", "dpkg"), (PYTHON, "python3")):
        if shutil.which(tool) is None:
            raise CloudInitUnavailable(f"{tool} is not installed (Debian package {package})")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CloudInitUnavailable(f"cannot create the cache {cache}: {exc}") from exc
    root = cache / "root"
    with _locked(cache / ".lock", LOCK_TIMEOUT):
        deb = _download(cache)
        version = deb.name.split("_")[1]
        stamp = cache / "root.version"
        current = stamp.read_text().strip() if stamp.exists() else None
        if current != version or not (root / "usr/bin/cloud-init").exists():
            staging = Path(tempfile.mkdtemp(prefix="root.", dir=cache))
            try:
                _run(["dpkg-deb", "-x", str(deb), str(staging)], timeout=120)
                if root.exists():
                    shutil.rmtree(root)
                staging.rename(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            stamp.write_text(version + "\n")
    ci = CloudInit(root, version)
    probe = ci.python(f"import {_MODULES}; import cloudinit.config.schema")
    if probe.returncode != 0:
        raise CloudInitUnavailable(
            "cloud-init's dependencies are missing from Debian's python3 "
            f"(apt-get install {' '.join(APT_DEPENDENCIES)}): {probe.stderr.strip()[-300:]}"
        )
    return ci


@pytest.fixture(scope="session")
def cloud_init() -> CloudInit:
    """cloud-init's own code (schema validator, network renderers), unpacked and cached."""
    try:
        return ensure_cloud_init()
    except CloudInitUnavailable as exc:
        unavailable(f"cloud-init unavailable: {exc}")
        raise  # unreachable: unavailable() skips or fails
