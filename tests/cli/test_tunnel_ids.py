"""`autoreg tunnel add NODE_ID` takes only a valid node id (it reaches authorized_keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from registration._config import ENV_OVERRIDES
from registration.cli import cli


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in [*ENV_OVERRIDES, "AUTOREG_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "autoreg.conf"
    path.write_text(
        f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path / 'keys'}\n"
        f"[controller]\nrole = clc\ncallback_user = cbuser\n"
        f"callback_authorized_keys = {tmp_path / 'callback_keys'}\ntunnel_ports = 21000-21005\n"
    )
    return path


def run(conf: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-c", str(conf), *args], catch_exceptions=False)


@pytest.mark.parametrize(
    "node_id",
    [
        'n1abc\nrestrict,permitlisten="*:22" ssh-ed25519 AAAA',
        "n1abc\r",
        "n1 abc",
        "sc1",
        "../../../etc/cron.d/x",
        "-n1abc",
        "n1abc\x1b[2J",
    ],
)
def test_tunnel_add_refuses_an_invalid_node_id(conf: Path, tmp_path: Path, node_id: str) -> None:
    result = run(conf, "tunnel", "add", "--generate", str(tmp_path / "media"), "--", node_id)
    assert result.exit_code == 2
    assert "NODE_ID" in result.stderr
    assert "must be 4-40 characters of A-Z a-z 0-9 _ -, starting with a letter or digit" in (
        result.stderr
    )
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert not (tmp_path / "callback_keys").exists()
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "media").exists()


def test_tunnel_add_writes_one_line_for_a_valid_id(conf: Path, tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    result = run(conf, "tunnel", "add", "n1abc", "--generate", str(tmp_path / "media"))
    assert result.exit_code == 0, result.stderr
    assert "listen_ports = 21000" in result.stdout
    lines = [
        line
        for line in (tmp_path / "callback_keys").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(lines) == 1
    assert lines[0].startswith('restrict,port-forwarding,permitlisten="127.0.0.1:21000",')
    assert lines[0].endswith(" autoreg-callback:n1abc")
