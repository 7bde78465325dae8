"""The controller end of reverse tunnels: key lines, sshd block, allocation files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from registration import ConfigError, KeyMaterialError, load_config
from registration.controller import _tunnels
from registration.state import Store, Tunnel


def _config(tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    conf = tmp_path / "autoreg.conf"
    conf.write_text(f"""[autoreg]
state_dir = {tmp_path / "state"}
keys_dir = {tmp_path / "keys"}
[controller]
role = clc
callback_user = cbuser
callback_authorized_keys = {tmp_path / "callback_keys"}
tunnel_ports = 21000-21005
{extra}
""")
    return load_config(conf, env={})


def _pubkey(tmp_path: Path, name: str = "k") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True
    )
    return (tmp_path / f"{name}.pub").read_text().strip()


def test_authorized_keys_pin_each_key_to_its_own_ports(tmp_path: Path) -> None:
    key = _pubkey(tmp_path)
    text = _tunnels.authorized_keys_text([Tunnel("n1", key, (20000, 20001), 0.0)])
    line = text.splitlines()[-1]
    assert line.startswith(
        'restrict,port-forwarding,permitlisten="127.0.0.1:20000",'
        'permitlisten="127.0.0.1:20001",command="/bin/false" ssh-ed25519 '
    )
    assert line.endswith(" autoreg-callback:n1")
    # sshd itself must accept the file (its own parser, not ours).
    (tmp_path / "ak").write_text(text)
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "ak")], capture_output=True, text=True, check=True
    ).stdout
    assert "autoreg-callback:n1" in out


def test_add_and_remove_tunnel_rewrite_the_keys_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Store(config.db_path) as store:
        tunnel, private = _tunnels.add_tunnel(
            config, store, "n1", public_key=None, generate_into=tmp_path / "media"
        )
        assert tunnel.ports == (21000, 21001)
        assert private is not None and private.stat().st_mode & 0o777 == 0o600
        keys = config.controller.callback_authorized_keys.read_text()
        assert "autoreg-callback:n1" in keys
        section = _tunnels.callback_config_text(
            config, tunnel, controller="10.0.0.1", key_path="/k", known_hosts_path="/kh"
        )
        assert "listen_ports = 21000, 21001" in section and "user = cbuser" in section
        # The printed section is valid configuration for the node.
        node_conf = tmp_path / "node.conf"
        node_conf.write_text(section)
        assert load_config(node_conf, env={}).callback.listen_ports == (21000, 21001)
        assert _tunnels.remove_tunnel(config, store, "n1")
        assert "autoreg-callback:n1" not in config.controller.callback_authorized_keys.read_text()


def test_add_tunnel_rejects_a_broken_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Store(config.db_path) as store, pytest.raises(KeyMaterialError):
        _tunnels.add_tunnel(
            config, store, "n1", public_key="ssh-ed25519 AAAAnotakey", generate_into=None
        )


def test_sshd_accepts_the_match_block(tmp_path: Path) -> None:
    """The generated block is valid sshd_config (checked by sshd -t, the real parser)."""
    config = _config(tmp_path)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hostkey")], check=True
    )
    cfg = tmp_path / "sshd_config"
    cfg.write_text(
        f"HostKey {tmp_path / 'hostkey'}\nUsePAM no\n" + _tunnels.sshd_match_block(config)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(cfg)], check=True)
    result = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(cfg), "-C", "user=cbuser,host=x,addr=127.0.0.1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for setting in (
        "allowtcpforwarding remote",
        "allowstreamlocalforwarding no",
        "permittty no",
        "forcecommand /bin/false",
        "allowagentforwarding no",
    ):
        assert setting in result


def test_proxy_section_requires_a_pinned_fingerprint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="proxy_fingerprint"):
        _config(tmp_path, "[cluster:foo]\nproxy = 10.0.0.9\n")
    fp = "SHA256:" + "B" * 43
    config = _config(tmp_path, f"[cluster:foo]\nproxy = 10.0.0.9\nproxy_fingerprint = {fp}\n")
    proxy = config.proxy_for("foo")
    assert proxy is not None and proxy.host == "10.0.0.9" and proxy.fingerprint == fp
    assert config.proxy_for("bar") is None
    with pytest.raises(ConfigError, match="unknown key"):
        _config(tmp_path, f"[cluster:foo]\nproxy = h\nproxy_fingerprint = {fp}\nbogus = 1\n")
