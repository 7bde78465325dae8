"""Path choice and access files (registration/controller/_reach.py), without a network.

The live paths (direct, tunnel, proxy with real sshd) are in
tests/integration/test_reach.py; here: the order of the chain, where it stops,
and that OpenSSH itself reads the ssh_config the way hooks rely on (``ssh -G``).
"""

from __future__ import annotations

import dataclasses
import stat
import subprocess
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from registration import load_config
from registration._config import Config
from registration._exceptions import FingerprintMismatch, NodeUnreachable
from registration._sshkeys import generate_ed25519
from registration.controller import _reach
from registration.controller._reach import TUNNEL_TIMEOUT, Reach
from registration.controller._ssh import (
    DIRECT,
    SSHTarget,
    VerifiedSession,
    Via,
    ViaProxy,
    ViaTunnel,
    load_private_key,
)
from registration.protocol import Announcement
from registration.state import NodeRecord
from support.prerequisites import prerequisite

NODE_FP = "SHA256:" + "N" * 43
PROXY_FP = "SHA256:" + "P" * 43


def _config(tmp_path: Path, proxies: str = "") -> Config:
    conf = tmp_path / "autoreg.conf"
    conf.write_text(
        f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path / 'keys'}\n"
        "[controller]\nrole = clc\nconnect_timeout = 7\nssh_user = root\n" + proxies
    )
    return load_config(conf, env={})


def _proxy_section(cluster: str, host: str = "10.9.0.1") -> str:
    return (
        f"[cluster:{cluster}]\nproxy = {host}\nproxy_user = gate\nproxy_fingerprint = {PROXY_FP}\n"
    )


def _rec(cluster: str | None = "foo", path: str | None = None) -> NodeRecord:
    ann = Announcement(
        node_id="node1", role="cc" if cluster else "walrus", ip="10.1.0.5", port=22,
        fingerprint=NODE_FP, cluster=cluster,
    )  # fmt: skip
    return dataclasses.replace(NodeRecord.new(ann, source="mdns", reason="", now=0.0), path=path)


def _described(paths: list[Via]) -> list[str]:
    return [via.describe() for via in paths]


def test_chain_is_direct_tunnels_proxy_with_the_last_good_path_first(tmp_path: Path) -> None:
    reach = Reach(_config(tmp_path, _proxy_section("foo")))
    assert _described(reach.candidates(_rec(), [20000, 20001])) == [
        "direct",
        "tunnel:20000",
        "tunnel:20001",
        "proxy:10.9.0.1",
    ]
    for last in ("tunnel:20001", "proxy:10.9.0.1", "tunnel:20000"):
        order = _described(reach.candidates(_rec(path=last), [20000, 20001]))
        assert order[0] == last
        assert sorted(order) == sorted(["direct", "tunnel:20000", "tunnel:20001", "proxy:10.9.0.1"])
    # A tunnel that worked last brings the node's other ports before direct: a returning
    # node takes its next port, and direct would only cost the connect timeout again.
    assert _described(reach.candidates(_rec(path="tunnel:20001"), [20000, 20001])) == [
        "tunnel:20001",
        "tunnel:20000",
        "direct",
        "proxy:10.9.0.1",
    ]
    # A path that is gone (a port no longer allocated) is simply not there.
    assert _described(reach.candidates(_rec(path="tunnel:29999"), [20000])) == [
        "tunnel:20000",
        "direct",
        "proxy:10.9.0.1",
    ]


def test_proxy_only_for_its_cluster_or_every_node_with_star(tmp_path: Path) -> None:
    reach = Reach(_config(tmp_path, _proxy_section("foo")))
    assert _described(reach.candidates(_rec(cluster="bar"), [])) == ["direct"]
    assert _described(reach.candidates(_rec(cluster=None), [])) == ["direct"]
    star = Reach(_config(tmp_path, _proxy_section("*", "10.9.9.9") + _proxy_section("foo")))
    assert _described(star.candidates(_rec(cluster=None), [])) == ["direct", "proxy:10.9.9.9"]
    assert _described(star.candidates(_rec(cluster="foo"), [])) == ["direct", "proxy:10.9.0.1"]
    proxy = star.candidates(_rec(cluster="foo"), [])[-1]
    assert isinstance(proxy, ViaProxy)
    assert (proxy.proxy.user, proxy.proxy.fingerprint, proxy.proxy.timeout) == ("gate", PROXY_FP, 7)


class _Recorder:
    """Stands in for open_verified: each path fails or succeeds as told."""

    def __init__(self, outcomes: dict[str, BaseException | None]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, float]] = []

    def __call__(
        self,
        target: SSHTarget,
        key: Any,
        *,
        via: Via,
        proxy_key: Any,
        sock: Any = None,
        proxy_session: Any = None,
    ) -> Any:
        self.calls.append((via.describe(), target.timeout))
        outcome = self.outcomes[via.describe()]
        if outcome is not None:
            raise outcome
        return f"session over {via.describe()}"


def _unreachable(what: str) -> NodeUnreachable:
    return NodeUnreachable(what, host="10.1.0.5", port=22)


def test_chain_moves_on_when_unreachable_and_caps_tunnel_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _Recorder(
        {
            "direct": _unreachable("timed out"),
            "tunnel:20000": _unreachable("stale forward"),
            "tunnel:20001": None,
            "proxy:10.9.0.1": None,
        }
    )
    monkeypatch.setattr(_reach, "open_verified", fake)
    reach = Reach(_config(tmp_path, _proxy_section("foo")))
    key = cast(paramiko.PKey, object())
    session: object = reach.connect(_rec(), key, [20000, 20001])
    assert session == "session over tunnel:20001"
    assert fake.calls == [("direct", 7), ("tunnel:20000", TUNNEL_TIMEOUT), ("tunnel:20001", 3)]


def test_chain_stops_at_once_on_a_host_key_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spoof = FingerprintMismatch(host="127.0.0.1", port=20000, announced=NODE_FP, actual=PROXY_FP)
    fake = _Recorder(
        {
            "direct": _unreachable("no route"),
            "tunnel:20000": spoof,
            "tunnel:20001": None,  # would verify: must never be tried after a spoof
            "proxy:10.9.0.1": None,
        }
    )
    monkeypatch.setattr(_reach, "open_verified", fake)
    reach = Reach(_config(tmp_path, _proxy_section("foo")))
    with pytest.raises(FingerprintMismatch) as raised:
        reach.connect(_rec(), cast(paramiko.PKey, object()), [20000, 20001])
    assert raised.value is spoof
    assert [c[0] for c in fake.calls] == ["direct", "tunnel:20000"]


def test_no_path_names_every_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Recorder({"direct": _unreachable("refused"), "tunnel:20000": _unreachable("stale")})
    monkeypatch.setattr(_reach, "open_verified", fake)
    with pytest.raises(NodeUnreachable, match=r"no path works \(direct: .*refused; tunnel:20000"):
        Reach(_config(tmp_path)).connect(_rec(), cast(paramiko.PKey, object()), [20000])


# -- access files ------------------------------------------------------------------------------


def _key(tmp_path: Path, name: str) -> paramiko.PKey:
    generate_ed25519(tmp_path / name, comment=name)
    return load_private_key(tmp_path / name)


def _session(tmp_path: Path, via: Via, proxy: VerifiedSession | None = None) -> VerifiedSession:
    target = SSHTarget("10.1.0.5", 22, NODE_FP, "ssh-ed25519", "root", 7)
    transport = cast(paramiko.Transport, None)  # never used by the file writers
    return VerifiedSession(target, transport, _key(tmp_path, "node"), via=via, proxy=proxy)


def _openssh_view(config_file: Path, host: str = "node") -> dict[str, str]:
    """How OpenSSH itself reads the file (``ssh -G`` parses and prints; it never connects)."""
    out = subprocess.run(
        ["ssh", "-G", "-F", str(config_file), host],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


needs_ssh = prerequisite("ssh", reason="needs OpenSSH's ssh")


@needs_ssh
def test_tunnel_access_files_lead_plain_ssh_to_the_loopback_port(tmp_path: Path) -> None:
    config = _config(tmp_path)
    reach = Reach(config, mux_dir=tmp_path / "mux")
    rec = _rec(cluster=None)
    session = _session(tmp_path, ViaTunnel(20001))
    files = reach.write_access_files(rec, session)
    view = _openssh_view(files.ssh_config)
    assert (view["hostname"], view["port"], view["user"]) == ("127.0.0.1", "20001", "root")
    assert view["hostkeyalias"] == "autoreg-node1"
    assert view["stricthostkeychecking"] == "true" and view["batchmode"] == "yes"
    assert view["userknownhostsfile"] == str(files.known_hosts)
    assert view["identityfile"] == str(config.controller_key)
    assert "proxycommand" not in view
    # Connection sharing only in the hook's copy: the kept file works without a daemon.
    assert view.get("controlmaster", "false") == "false"
    assert files.hook_ssh_config is not None
    hook_view = _openssh_view(files.hook_ssh_config)
    assert hook_view["controlpath"].startswith(str(tmp_path / "mux"))
    assert hook_view["hostname"] == "127.0.0.1"
    known = files.known_hosts.read_text().splitlines()
    assert known[0] == f"autoreg-node1 {session.host_key_line}"
    for path in (files.ssh_config, files.known_hosts):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = reach.path_env(rec, session, files)
    assert (env["AUTOREG_PATH"], env["AUTOREG_SSH_HOST"], env["AUTOREG_SSH_PORT"]) == (
        "tunnel",
        "127.0.0.1",
        "20001",
    )
    assert env["AUTOREG_PROXY"] == ""


@needs_ssh
def test_proxy_access_files_go_through_the_pinned_proxy(tmp_path: Path) -> None:
    config = _config(tmp_path, _proxy_section("foo"))
    reach = Reach(config)
    rec = _rec(cluster="foo")
    via = reach.candidates(rec, [])[-1]
    assert isinstance(via, ViaProxy)
    proxy_session = VerifiedSession(
        via.proxy, cast(paramiko.Transport, None), _key(tmp_path, "proxy"), via=DIRECT
    )
    session = _session(tmp_path, via, proxy=proxy_session)
    files = reach.write_access_files(rec, session)
    view = _openssh_view(files.ssh_config)
    assert (view["hostname"], view["port"]) == ("10.1.0.5", "22")
    assert view["proxycommand"] == f"ssh -F {files.ssh_config} -W %h:%p autoreg-proxy-foo"
    hop = _openssh_view(files.ssh_config, "autoreg-proxy-foo")
    assert (hop["hostname"], hop["port"], hop["user"]) == ("10.9.0.1", "22", "gate")
    assert hop["hostkeyalias"] == "autoreg-proxy-foo"
    assert hop["stricthostkeychecking"] == "true"
    assert hop["userknownhostsfile"] == str(files.known_hosts)
    known = files.known_hosts.read_text().splitlines()
    assert f"autoreg-proxy-foo {proxy_session.host_key_line}" in known
    assert f"autoreg-node1 {session.host_key_line}" in known
    env = reach.path_env(rec, session, files)
    assert env["AUTOREG_PATH"] == "proxy" and env["AUTOREG_PROXY"] == "gate@10.9.0.1:22"
    assert (env["AUTOREG_SSH_HOST"], env["AUTOREG_SSH_PORT"]) == ("10.1.0.5", "22")
