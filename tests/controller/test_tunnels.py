"""The controller end of reverse tunnels: key lines, sshd block, allocation files."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registration import AnnouncementError, ConfigError, KeyMaterialError, load_config
from registration._sshkeys import PublicKey, parse_public_key
from registration.controller import _tunnels
from registration.state import Tunnel
from support.sync_store import SyncStore


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
    text = _tunnels.authorized_keys_text([Tunnel("n1abc", key, (20000, 20001), 0.0)])
    line = text.splitlines()[-1]
    assert line.startswith(
        'restrict,port-forwarding,permitlisten="127.0.0.1:20000",'
        'permitlisten="127.0.0.1:20001",command="/bin/false" ssh-ed25519 '
    )
    assert line.endswith(" autoreg-callback:n1abc")
    # sshd itself must accept the file (its own parser, not ours).
    (tmp_path / "ak").write_text(text)
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "ak")], capture_output=True, text=True, check=True
    ).stdout
    assert "autoreg-callback:n1abc" in out


def test_add_and_remove_tunnel_rewrite_the_keys_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with SyncStore(config.db_path) as sync:
        store = sync.store
        tunnel, private = asyncio.run(
            _tunnels.add_tunnel(
                config, store, "n1abc", public_key=None, generate_into=tmp_path / "media"
            )
        )
        assert tunnel.ports == (21000, 21001)
        assert private is not None and private.stat().st_mode & 0o777 == 0o600
        keys = config.controller.callback_authorized_keys.read_text()
        assert "autoreg-callback:n1abc" in keys
        section = _tunnels.callback_config_text(
            config, tunnel, controller="10.0.0.1", key_path="/k", known_hosts_path="/kh"
        )
        assert "listen_ports = 21000, 21001" in section and "user = cbuser" in section
        # The printed section is valid configuration for the node.
        node_conf = tmp_path / "node.conf"
        node_conf.write_text(section)
        assert load_config(node_conf, env={}).callback.listen_ports == (21000, 21001)
        assert asyncio.run(_tunnels.remove_tunnel(config, store, "n1abc"))
        assert (
            "autoreg-callback:n1abc" not in config.controller.callback_authorized_keys.read_text()
        )


def test_add_tunnel_rejects_a_broken_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with SyncStore(config.db_path) as sync, pytest.raises(KeyMaterialError):
        asyncio.run(
            _tunnels.add_tunnel(
                config,
                sync.store,
                "n1abc",
                public_key="ssh-ed25519 AAAAnotakey",
                generate_into=None,
            )
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


# -- hostile ids and keys: one line per tunnel, only our options ------------------------

ALLOWED_OPTIONS = {"restrict", "port-forwarding", 'command="/bin/false"'}


def _ed25519_line(comment: str = "") -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    line = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}" if comment else line


def _options(line: str) -> list[str]:
    """The options field of an authorized_keys line, split at commas outside quotes."""
    field, _, _ = line.partition(" ")
    options, current, quoted = [], "", False
    for ch in field:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            options.append(current)
            current = ""
        else:
            current += ch
    return [*options, current]


def _assert_only_our_lines(text: str, tunnels: list[Tunnel]) -> None:
    lines = [line for line in text.split("\n") if line and not line.startswith("#")]
    assert len(lines) == len(tunnels)
    assert text.isascii() and all(line.isprintable() for line in text.split("\n"))
    for line, tunnel in zip(lines, tunnels, strict=True):
        listen = {f'permitlisten="127.0.0.1:{port}"' for port in tunnel.ports}
        assert set(_options(line)) == ALLOWED_OPTIONS | listen
        key_type, _blob, comment = line.split(" ")[1:]
        assert key_type == "ssh-ed25519"
        assert comment == f"autoreg-callback:{tunnel.node_id}"


def test_authorized_key_line_is_built_from_checked_parts() -> None:
    key = parse_public_key(_ed25519_line("my comment"), source="test")
    line = _tunnels.authorized_key_line("n1abc", (21000, 21001), key)
    assert line == (
        'restrict,port-forwarding,permitlisten="127.0.0.1:21000",'
        'permitlisten="127.0.0.1:21001",command="/bin/false" '
        f"ssh-ed25519 {key.openssh.split()[1]} autoreg-callback:n1abc"
    )


@pytest.mark.parametrize(
    ("node_id", "ports", "key_type"),
    [
        ("n1abc\nrestrict", (21000,), "ssh-ed25519"),
        ('n1abc command="/bin/sh"', (21000,), "ssh-ed25519"),
        ("n1abc\r", (21000,), "ssh-ed25519"),
        ("n1\x1b[2J", (21000,), "ssh-ed25519"),
        ("n1abc", (), "ssh-ed25519"),
        ("n1abc", (0,), "ssh-ed25519"),
        ("n1abc", (70000,), "ssh-ed25519"),
        ("n1abc", (True,), "ssh-ed25519"),
        ("n1abc", (21000,), "ssh-ed25519\nssh-rsa"),
        ("n1abc", (21000,), 'ssh-ed25519 command="x"'),
    ],
)
def test_authorized_key_line_refuses_anything_unchecked(
    node_id: str, ports: tuple[int, ...], key_type: str
) -> None:
    key = parse_public_key(_ed25519_line(), source="test")
    with pytest.raises(ValueError, match=r"."):
        _tunnels.authorized_key_line(node_id, ports, PublicKey(key_type, key.blob))


def test_node_id_with_a_newline_never_reaches_authorized_keys(tmp_path: Path) -> None:
    key = _ed25519_line()
    injected = f'n1abc\nrestrict,port-forwarding,permitlisten="*:22" {key} x'
    with pytest.raises(KeyMaterialError, match="must be 4-40 characters"):
        _tunnels.authorized_keys_text([Tunnel(injected, key, (21000,), 0.0)])
    config = _config(tmp_path)
    with SyncStore(config.db_path) as sync:
        store = sync.store
        with pytest.raises(AnnouncementError, match="must be 4-40 characters"):
            asyncio.run(
                _tunnels.add_tunnel(config, store, injected, public_key=key, generate_into=None)
            )
        with pytest.raises(AnnouncementError):
            asyncio.run(
                _tunnels.add_tunnel(
                    config, store, "../../etc/x", public_key=None, generate_into=tmp_path / "media"
                )
            )
        assert sync.tunnels() == []
    assert not config.controller.callback_authorized_keys.exists()
    assert not (tmp_path / "media").exists()


def test_public_key_comment_with_a_newline_stays_on_its_line(tmp_path: Path) -> None:
    smuggled = f'restrict,permitopen="*:*" {_ed25519_line()} evil'
    key = _ed25519_line(f"comment\n{smuggled}")
    tunnels = [Tunnel("n1abc", key, (21000, 21001), 0.0), Tunnel("n2abc", key, (21002,), 0.0)]
    text = _tunnels.authorized_keys_text(tunnels)
    _assert_only_our_lines(text, tunnels)
    assert "evil" not in text and "permitopen" not in text
    # and `tunnel add` does not take a key file of more than one line at all
    config = _config(tmp_path)
    with SyncStore(config.db_path) as sync:
        store = sync.store
        with pytest.raises(KeyMaterialError, match="more than one line"):
            asyncio.run(
                _tunnels.add_tunnel(config, store, "n1abc", public_key=key, generate_into=None)
            )
        assert sync.tunnels() == []


@pytest.mark.parametrize(
    "options",
    ['command="/bin/sh"', 'restrict,permitopen="*:*"', "no-pty", 'from="*",command="sh -i"'],
)
def test_public_key_with_options_prepended_is_refused(tmp_path: Path, options: str) -> None:
    key = f"{options} {_ed25519_line('c')}"
    with pytest.raises(KeyMaterialError):
        _tunnels.authorized_keys_text([Tunnel("n1abc", key, (21000,), 0.0)])
    config = _config(tmp_path)
    with SyncStore(config.db_path) as sync, pytest.raises(KeyMaterialError):
        asyncio.run(
            _tunnels.add_tunnel(config, sync.store, "n1abc", public_key=key, generate_into=None)
        )
    assert not config.controller.callback_authorized_keys.exists()


_KEY = _ed25519_line()


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{3,39}", fullmatch=True)


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.one_of(_ids, st.tuples(_ids, st.text(max_size=20)).map("".join), st.text(max_size=45)),
    st.text(max_size=30),
)
def test_any_node_id_and_comment_give_one_line_or_an_error(node_id: str, comment: str) -> None:
    tunnel = Tunnel(node_id, f"{_KEY} {comment}", (21000,), 0.0)
    try:
        text = _tunnels.authorized_keys_text([tunnel])
    except KeyMaterialError:
        return
    _assert_only_our_lines(text, [tunnel])
