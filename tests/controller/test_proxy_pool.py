"""One connection per proxy node (registration/controller/_proxies.py), without a network.

The pool is given a stand-in for ``open_verified``: what matters here is how
often it is called, by how many threads at once, and what the nodes behind a
proxy get when it fails.  Real proxies (an sshd whose log counts the
connections) are in tests/integration/test_exec_fanout.py.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from registration import load_config
from registration._exceptions import FingerprintMismatch, NodeUnreachable, SSHError
from registration.controller import ProxyPool, _reach
from registration.controller._reach import Reach
from registration.controller._ssh import SSHTarget, VerifiedSession, Via, ViaProxy
from registration.protocol import Announcement
from registration.state import NodeRecord

pytestmark = pytest.mark.timeout(30)

PROXY = SSHTarget("10.9.0.1", 22, "SHA256:" + "P" * 43, "ssh-ed25519", "gate", 5.0)
OTHER = SSHTarget("10.9.0.2", 22, "SHA256:" + "Q" * 43, "ssh-ed25519", "gate", 5.0)
KEY = cast(paramiko.PKey, object())


class FakeSession:
    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.live = True
        self.closed = False

    def alive(self) -> bool:
        return self.live and not self.closed

    def close(self) -> None:
        self.closed = True


class Opener:
    """Stands in for open_verified(proxy, key): counts calls, fails as told."""

    def __init__(self, failure: SSHError | None = None) -> None:
        self.failure = failure
        self.calls: list[str] = []
        self.sessions: list[FakeSession] = []
        self._lock = threading.Lock()

    def __call__(self, target: SSHTarget, key: paramiko.PKey) -> Any:
        with self._lock:
            self.calls.append(target.host)
        if self.failure is not None:
            raise self.failure
        session = FakeSession(target)
        self.sessions.append(session)
        return session


def test_twenty_nodes_at_once_share_one_proxy_connection() -> None:
    opener = Opener()
    pool = ProxyPool(KEY, opener=opener)
    start = threading.Barrier(20)

    def node(_: int) -> Any:
        start.wait(10)  # all twenty ask at the same moment
        return pool.session(PROXY)

    with concurrent.futures.ThreadPoolExecutor(20) as threads:
        sessions = list(threads.map(node, range(20)))
    assert opener.calls == ["10.9.0.1"]
    assert all(s is sessions[0] for s in sessions)
    assert pool.opened == {"10.9.0.1": 1}
    assert pool.session(OTHER) is not sessions[0]  # another proxy: its own connection
    assert opener.calls == ["10.9.0.1", "10.9.0.2"]
    pool.close()
    assert all(s.closed for s in opener.sessions)


def test_a_failed_proxy_is_not_dialled_again_and_every_node_gets_the_reason() -> None:
    first = NodeUnreachable("SSH handshake failed: timed out", host="10.9.0.1", port=22)
    opener = Opener(first)
    pool = ProxyPool(KEY, opener=opener)
    with pytest.raises(NodeUnreachable) as raised:
        pool.session(PROXY)
    assert raised.value is first
    for _ in range(3):
        with pytest.raises(NodeUnreachable) as again:
            pool.session(PROXY)
        assert again.value is not first  # one exception object per node
        assert str(again.value) == str(first)
        assert again.value.__cause__ is first
    assert opener.calls == ["10.9.0.1"]


def test_a_spoofed_proxy_stays_a_fingerprint_mismatch() -> None:
    spoof = FingerprintMismatch(host="10.9.0.1", port=22, announced="SHA256:a", actual="SHA256:b")
    pool = ProxyPool(KEY, opener=Opener(spoof))
    with pytest.raises(FingerprintMismatch):
        pool.session(PROXY)
    with pytest.raises(FingerprintMismatch) as again:
        pool.session(PROXY)
    assert (again.value.announced, again.value.actual) == ("SHA256:a", "SHA256:b")


def test_a_proxy_connection_that_died_is_opened_again() -> None:
    opener = Opener()
    pool = ProxyPool(KEY, opener=opener)
    first = pool.session(PROXY)
    first.live = False
    second = pool.session(PROXY)
    assert second is not first and first.closed
    assert opener.calls == ["10.9.0.1", "10.9.0.1"]


def test_a_closed_pool_opens_nothing() -> None:
    opener = Opener()
    pool = ProxyPool(KEY, opener=opener)
    pool.close()
    with pytest.raises(NodeUnreachable, match="closed"):
        pool.session(PROXY)
    assert opener.calls == []


def _config(tmp_path: Path) -> Any:
    conf = tmp_path / "autoreg.conf"
    conf.write_text(
        f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path / 'keys'}\n"
        "[controller]\nrole = clc\nconnect_timeout = 7\n"
        "[cluster:foo]\nproxy = 10.9.0.1\nproxy_user = gate\n"
        f"proxy_fingerprint = {PROXY.fingerprint}\n"
    )
    return load_config(conf, env={})


def test_reach_takes_the_proxy_connection_from_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, object]] = []

    def fake_open(target: SSHTarget, key: Any, *, via: Via, **kw: Any) -> Any:
        calls.append((via.describe(), kw.get("proxy_session")))
        if not isinstance(via, ViaProxy):
            raise NodeUnreachable("no route to host", host=target.host, port=target.port)
        return f"node session over {via.describe()}"

    monkeypatch.setattr(_reach, "open_verified", fake_open)
    opener = Opener()
    pool = ProxyPool(KEY, opener=opener)
    reach = Reach(_config(tmp_path))
    for i in range(3):
        ann = Announcement(
            node_id=f"node{i}", role="nc", ip=f"10.1.0.{i + 5}", port=22,
            fingerprint="SHA256:" + "N" * 43, cluster="foo",
        )  # fmt: skip
        rec = NodeRecord.new(ann, source="manual", reason="", now=0.0)
        assert reach.connect(rec, KEY, proxies=pool) == "node session over proxy:10.9.0.1"
    assert opener.calls == ["10.9.0.1"]
    shared = opener.sessions[0]
    assert [c for c in calls if c[0] != "direct"] == [("proxy:10.9.0.1", shared)] * 3


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_node_session_closes_its_own_proxy_but_never_a_shared_one() -> None:
    node = SSHTarget("10.1.0.5", 22, "SHA256:" + "N" * 43, "ssh-ed25519", "root", 5.0)
    for owns in (True, False):
        proxy, transport = FakeSession(PROXY), FakeTransport()
        session = VerifiedSession(
            node, cast(Any, transport), KEY, via=ViaProxy(PROXY), proxy=cast(Any, proxy),
            owns_proxy=owns,
        )  # fmt: skip
        session.close()
        assert transport.closed
        assert proxy.closed is owns
