"""The systemd units: `systemd-analyze verify` clean, hardened, no restart loops."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from support.prerequisites import prerequisite

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ("autoreg-daemon.service", "autoreg-announce.service", "autoreg-callback.service")


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@prerequisite("systemd-analyze", reason="needs systemd-analyze (Debian package systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """Verified in a scratch root: the system's units, ours, and /usr/bin/autoreg."""
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/autoreg").write_text("#!/bin/sh\n")
    (root / "usr/bin/autoreg").chmod(0o755)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "lib/systemd/system" / name)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *NAMES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("name", NAMES)
def test_units_are_hardened_and_do_not_loop(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert service["ExecStart"].startswith("/usr/bin/autoreg ")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] in ("strict", "full")
    assert service["Restart"] == "on-failure"
    # a configuration error stays down (and a second daemon does not retry forever)
    assert "78" in service["RestartPreventExitStatus"].split()
    assert "network-online.target" in unit["Unit"]["After"]
    assert int(unit["Unit"]["StartLimitBurst"]) > 0
