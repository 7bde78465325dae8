"""A clean Debian 12 root for package tests, cached outside the checkout.

``base_root()`` debootstraps bookworm (minbase) once and installs, with apt
inside it, every runtime dependency of the packages, so installing autoreg's
own .debs later needs no download.  The cache is keyed by the package list:
it is rebuilt only when it is missing or the list changed.  Each test gets a
:class:`DebRoot`: an overlay (the cached root read-only below, the test's
changes above) with /proc, /dev and /sys bound in, removed at close.

``build_debs()`` builds the binary packages from a copy of the source tree
with ``dpkg-buildpackage -us -uc -b``, optionally as another version and
with a patch applied to the copy (an "older release").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

__all__ = ["CACHE", "DebRoot", "base_root", "build_debs"]

CACHE: Final = Path(os.environ.get("AUTOREG_TEST_CACHE", "/var/cache/autoreg-tests"))
SUITE: Final = "bookworm"
MIRROR: Final = os.environ.get("AUTOREG_TEST_MIRROR", "http://deb.debian.org/debian")
SOURCE: Final = Path(__file__).resolve().parents[2]
#: What the packages need at run time (debian/control), plus tools the tests use.
BASE_PACKAGES: Final = (
    "adduser",
    "iproute2",
    "procps",
    "openssh-server",
    "openssh-client",
    "python3",
    "python3-aiohttp",
    "python3-click",
    "python3-cryptography",
    "python3-jinja2",
    "python3-paramiko",
    "python3-pycdlib",
    "python3-yaml",
    "python3-zeroconf",
    "python3-dbus",
)
_ENV: Final = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
_BUILD_TIMEOUT: Final = 600
_BOOTSTRAP_TIMEOUT: Final = 1200


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env or _ENV,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def base_root() -> Path:
    """The cached Debian root for this package list (built when missing)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR, *sorted(BASE_PACKAGES))).encode()).hexdigest()
    root = CACHE / f"{SUITE}-{key[:12]}"
    if (root / ".autoreg-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"{SUITE}-*"):  # roots of an older package list
        if stale != root:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SUITE}-", dir=CACHE))
    try:
        _run(
            ["debootstrap", "--variant=minbase", SUITE, str(tmp), MIRROR],
            timeout=_BOOTSTRAP_TIMEOUT,
        )
        # No service may start inside the root while packages install.
        (tmp / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (tmp / "usr/sbin/policy-rc.d").chmod(0o755)
        with _mounted(tmp):
            _run(
                [
                    "chroot",
                    str(tmp),
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    *BASE_PACKAGES,
                ],
                timeout=_BOOTSTRAP_TIMEOUT,
            )
            _run(["chroot", str(tmp), "apt-get", "clean"], timeout=60)
        (tmp / ".autoreg-complete").write_text(" ".join(BASE_PACKAGES) + "\n")
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@contextlib.contextmanager
def _mounted(root: Path):  # type: ignore[no-untyped-def]
    """/proc, /sys, /dev and /dev/pts inside ``root`` for the duration."""
    targets = []
    try:
        for source, target, fstype in (
            ("proc", "proc", "proc"),
            ("sysfs", "sys", "sysfs"),
            ("/dev", "dev", None),
            ("/dev/pts", "dev/pts", None),
        ):
            path = root / target
            path.mkdir(parents=True, exist_ok=True)
            if fstype is None:
                _run(["mount", "--bind", source, str(path)], timeout=30)
            else:
                _run(["mount", "-t", fstype, source, str(path)], timeout=30)
            targets.append(path)
        yield root
    finally:
        for path in reversed(targets):
            subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


class DebRoot:
    """One test's Debian root: an overlay over the cached base, torn down by close()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / "root"
        for name in ("upper", "work", "root"):
            (workdir / name).mkdir(parents=True, exist_ok=True)
        base = base_root()
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={workdir / 'upper'},workdir={workdir / 'work'}",
                str(self.path),
            ],
            timeout=30,
        )
        self._mounts = contextlib.ExitStack()
        try:
            self._mounts.enter_context(_mounted(self.path))
        except BaseException:
            self.close()
            raise

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` chrooted in this root (Debian's own programs and Python)."""
        result = subprocess.run(
            ["chroot", str(self.path), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_ENV,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the Debian root: {' '.join(argv)} exited "
                f"{result.returncode}:\n{result.stdout[-2000:]}\n"
                f"{result.stderr[-2000:]}"
            )
        return result

    def chroot_argv(self, argv: Sequence[str]) -> list[str]:
        """For spawning long-running processes (e.g. inside a lab host's namespace)."""
        return [
            "chroot",
            str(self.path),
            "/usr/bin/env",
            *(f"{k}={v}" for k, v in _ENV.items()),
            *argv,
        ]

    def copy_in(self, files: Sequence[Path], where: str) -> list[str]:
        target = self.path / where.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, target / file.name)
        return [f"{where.rstrip('/')}/{f.name}" for f in files]

    def close(self) -> None:
        self._mounts.close()
        subprocess.run(["umount", "-l", str(self.path)], check=False, timeout=30)


def build_debs(
    outdir: Path,
    *,
    version: str | None = None,
    patch: Callable[[Path], None] | None = None,
    ref: str | None = None,
) -> list[Path]:
    """Build the .debs from a copy of the tracked source tree into ``outdir``.

    ``ref``: build that commit instead (an earlier release, from the history).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    src = outdir / "src" / "autoreg"
    git_env = {**_ENV, "GIT_DIR": str(SOURCE / ".git")}
    if ref is not None:
        src.mkdir(parents=True)
        archive = outdir / "source.tar"
        _run(["git", "archive", "--format=tar", "-o", str(archive), ref], timeout=60,
             cwd=SOURCE, env=git_env)  # fmt: skip
        _run(["tar", "-x", "-f", str(archive), "-C", str(src)], timeout=60)
    else:
        files = _run(["git", "ls-files", "-z"], timeout=60, cwd=SOURCE, env=git_env).stdout.split(
            "\0"
        )
        for name in filter(None, files):
            if not (SOURCE / name).exists():
                continue
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SOURCE / name, src / name)
    if patch is not None:
        patch(src)
    if version is not None:
        _set_version(src, version)
    _run(["dpkg-buildpackage", "-us", "-uc", "-b"], timeout=_BUILD_TIMEOUT, cwd=src)
    return sorted((outdir / "src").glob("*.deb"))


def _set_version(src: Path, version: str) -> None:
    changelog = src / "debian" / "changelog"
    entry = (
        f"autoreg ({version}) unstable; urgency=medium\n\n  * Test build.\n\n"
        " -- autoreg tests <tests@autoreg.invalid>  Sun, 22 Nov 2026 00:00:00 +0000\n\n"
    )
    changelog.write_text(entry + changelog.read_text())
    version_py = src / "registration" / "_version.py"
    upstream = version.split("-", maxsplit=1)[0].split("~", maxsplit=1)[0]
    version_py.write_text(
        version_py.read_text().replace(
            version_py.read_text().split('__version__ = "')[1].split('"')[0], upstream
        )
    )
