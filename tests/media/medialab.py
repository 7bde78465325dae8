"""Helpers of the media tests: a controller's files in a temporary directory, tools.

The CLI runs as a real process (``python -m registration``), like an admin runs it.
Independent readers check what it writes: xorriso, isoinfo (genisoimage), blkid,
ssh-keygen, systemctl --root, and cloud-init's own code (:mod:`support.cloudinit`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registration._config import ENV_OVERRIDES
from support.cloudinit import cloud_init, missing_tool, unavailable

__all__ = [
    "Controller",
    "_controller_keys",
    "cloud_init",
    "controller",
    "genisoimage",
    "isoinfo",
    "tool",
    "xorriso",
]


@dataclasses.dataclass
class Controller:
    """A controller's files: keys, state store, callback authorized_keys, sshd host key."""

    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "autoreg.conf"

    @property
    def keys(self) -> Path:
        return self.dir / "keys"

    @property
    def callback_keys(self) -> Path:
        return self.dir / "callback_authorized_keys"

    @property
    def sshd_host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
        env.pop("AUTOREG_CONFIG", None)
        result = subprocess.run(
            [sys.executable, "-m", "registration", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"autoreg {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    @property
    def public_key(self) -> str:
        return str(self.json("keys", "show", "--json")["public_key"])


def _write_conf(ctl: Controller) -> None:
    ctl.conf.write_text(
        "\n".join(
            [
                "[autoreg]",
                f"state_dir = {ctl.dir / 'state'}",
                f"keys_dir = {ctl.keys}",
                "[controller]",
                f"callback_authorized_keys = {ctl.callback_keys}",
                f"sshd_host_key = {ctl.sshd_host_key}.pub",
                "tunnel_ports = 21000-21099",
                "",
            ]
        )
    )


@pytest.fixture(scope="session")
def _controller_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once: `keys init` and the sshd host key (copied into each test's controller)."""
    ctl = Controller(tmp_path_factory.mktemp("controller-keys"))
    _write_conf(ctl)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ctl.sshd_host_key)],
        check=True,
        timeout=30,
    )
    ctl.run("keys", "init")
    return ctl.dir


@pytest.fixture
def controller(tmp_path: Path, _controller_keys: Path) -> Controller:
    """``keys init`` done; the sshd host key nodes pin exists (like /etc/ssh's)."""
    ctl = Controller(tmp_path / "controller")
    ctl.dir.mkdir()
    shutil.copytree(_controller_keys / "keys", ctl.keys)
    for suffix in ("", ".pub"):
        shutil.copy2(f"{_controller_keys / ctl.sshd_host_key.name}{suffix}", ctl.dir)
    _write_conf(ctl)
    return ctl


def tool(name: str, package: str) -> str:
    """The path of ``name``; skip (fail in CI) with the Debian package to install if missing."""
    reason = missing_tool(name, package)
    if reason is not None:
        unavailable(reason)
    found = shutil.which(name)
    assert found is not None
    return found


@pytest.fixture(scope="session")
def xorriso() -> str:
    return tool("xorriso", "xorriso")


@pytest.fixture(scope="session")
def isoinfo() -> str:
    return tool("isoinfo", "genisoimage")


@pytest.fixture(scope="session")
def genisoimage() -> str:
    return tool("genisoimage", "genisoimage")
