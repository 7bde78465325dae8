"""``autoreg exec``'s fan-out (registration/_remote.run_on_nodes), without a network.

Each node is an in-process SSH server over a socket pair (``support.fake_sshd``)
handed out where the path chain would connect (``Reach.connect``): what is
checked here is what the fan-out adds — output cut into lines per node and
stream, the progress counts, at most ``parallel`` nodes at once, a per-node
error instead of an exception, the time limit, and Ctrl-C ending every running
command at once.  Real sshd on every path: tests/integration/test_exec_fanout.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from registration import load_config
from registration._config import Config
from registration._exceptions import NodeUnreachable
from registration._follow import follow_nodes
from registration._remote import LINE_LIMIT, NO_EXIT_STATUS, ExecProgress, _Lines, run_on_nodes
from registration._sshkeys import generate_ed25519
from registration.controller._reach import Reach
from registration.protocol import Announcement
from registration.state import NodeRecord, NodeState
from support.fake_sshd import Behaviour, FakeSshd, connected, hangs, writes

pytestmark = pytest.mark.timeout(60)


class FakeStore:
    """The store calls exec makes: tunnels, paths; and ``exec --follow``'s listing of nodes."""

    def __init__(self, nodes: list[NodeRecord] | None = None) -> None:
        self.noted: list[tuple[str, str]] = []
        self.listed = list(nodes or [])
        self.tunnel_asked: list[str] = []

    async def tunnels(self) -> list[Any]:
        return []

    async def tunnel(self, node_id: str) -> Any:
        self.tunnel_asked.append(node_id)
        return None

    async def nodes(self) -> list[NodeRecord]:
        return list(self.listed)

    async def note_path(self, node_id: str, path: str) -> None:
        self.noted.append((node_id, path))


def _config(tmp_path: Path) -> Config:
    conf = tmp_path / "autoreg.conf"
    conf.write_text(
        f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path / 'keys'}\n"
        "[controller]\nrole = clc\n"
    )
    config = load_config(conf, env={})
    config.controller_key.parent.mkdir(parents=True)
    generate_ed25519(config.controller_key, comment="test")
    return config


def _rec(node_id: str, path: str | None = None) -> NodeRecord:
    ann = Announcement(
        node_id=node_id, role="nc", ip="10.1.0.5", port=22,
        fingerprint="SHA256:" + "N" * 43, cluster="foo", name=node_id.removeprefix("node-"),
    )  # fmt: skip
    return dataclasses.replace(NodeRecord.new(ann, source="manual", reason="", now=0.0), path=path)


class Fleet:
    """One fake sshd per node; a node without one is unreachable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, behaviours: dict[str, Behaviour]) -> None:
        self.servers = {node: FakeSshd({"work": b}) for node, b in behaviours.items()}
        fleet = self

        def connect(self: Reach, rec: NodeRecord, key: Any, *a: Any, **kw: Any) -> Any:
            server = fleet.servers.get(rec.node_id)
            if server is None:
                raise NodeUnreachable("no path works (direct: timed out)", host=rec.ip, port=22)
            return connected(server, rec.ip)

        monkeypatch.setattr(Reach, "connect", connect)
        monkeypatch.setattr(Reach, "write_access_files", lambda self, rec, session: None)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


async def test_each_node_its_lines_its_status_and_the_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(
        monkeypatch,
        {
            "node-ok": writes(b"hello\nworld\nlast words", b"careful\n", 0),
            "node-bad": writes(b"", b"broken\n", 3),
            "node-sig": writes(b"cut\n", status=None),
            "node-slow": hangs(b"started\n"),
        },
    )
    store = FakeStore()
    lines: list[tuple[str, str, str]] = []
    progress: list[ExecProgress] = []
    nodes = [_rec(n) for n in ("node-ok", "node-bad", "node-gone", "node-sig", "node-slow")]
    try:
        results = await run_on_nodes(
            _config(tmp_path), store, nodes, ["work"], parallel=2, timeout=1.0,
            emit=lambda *line: lines.append(line), progress=progress.append,
        )  # fmt: skip
    finally:
        fleet.close()
    outcome = {r.name: (r.path, r.returncode, r.error) for r in results}
    assert outcome == {
        "ok": ("direct", 0, ""),
        "bad": ("direct", 3, ""),
        "gone": ("-", None, "10.1.0.5:22: no path works (direct: timed out)"),
        "sig": ("direct", None, NO_EXIT_STATUS),
        "slow": ("direct", None, "timed out after 1s"),
    }
    assert [r.name for r in results] == ["ok", "bad", "gone", "sig", "slow"]
    assert [r.ok for r in results] == [True, False, False, False, False]
    for name in ("ok", "bad", "sig", "slow"):
        assert fleet.servers[f"node-{name}"].commands == ["work"]
    # in order on each stream; the last line is kept although it has no newline
    assert [t for n, s, t in lines if (n, s) == ("ok", "out")] == ["hello", "world", "last words"]
    assert [t for n, s, t in lines if (n, s) == ("ok", "err")] == ["careful"]
    assert ("bad", "err", "broken") in lines
    assert ("sig", "out", "cut") in lines and ("slow", "out", "started") in lines
    assert progress[0] == ExecProgress(total=5)
    assert progress[-1] == ExecProgress(total=5, done=1, failed=4, running=0)
    assert max(p.running for p in progress) == 2  # --parallel 2
    assert all(p.waiting >= 0 for p in progress)
    # the path each reached node took is recorded (none had one yet)
    assert sorted(store.noted) == sorted(
        (n, "direct") for n in ("node-ok", "node-bad", "node-sig", "node-slow")
    )


async def test_a_known_path_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(monkeypatch, {"node-ok": writes(b"", b"", 0)})
    store = FakeStore()
    try:
        (result,) = await run_on_nodes(
            _config(tmp_path), store, [_rec("node-ok", path="direct")], ["work"],
            parallel=4, timeout=10, emit=lambda *line: None,
        )  # fmt: skip
    finally:
        fleet.close()
    assert result.ok and store.noted == []


async def test_cancelled_exec_hangs_up_on_every_running_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = {n: threading.Event() for n in ("node-a", "node-b")}
    fleet = Fleet(monkeypatch, {n: hangs(b"started\n", e) for n, e in ended.items()})
    running = asyncio.Event()
    started: set[str] = set()

    def emit(name: str, stream: str, text: str) -> None:
        started.add(name)
        if len(started) == 2:
            running.set()

    nodes = [_rec(n) for n in ended]
    config = _config(tmp_path)
    task = asyncio.ensure_future(
        run_on_nodes(config, FakeStore(), nodes, ["work"], parallel=2, timeout=600, emit=emit)
    )
    try:
        await asyncio.wait_for(running.wait(), 10)
        task.cancel()  # what Ctrl-C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        for node, event in ended.items():
            assert await asyncio.to_thread(event.wait, 10), f"{node} still runs its command"
    finally:
        fleet.close()


async def test_follow_runs_a_node_that_registers_meanwhile_then_returns_once_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(monkeypatch, {n: writes(b"hello\n", b"", 0) for n in ("node-first", "node-next")})
    first, later = (
        dataclasses.replace(_rec(n), state=NodeState.REGISTERED)
        for n in ("node-first", "node-next")
    )
    store = FakeStore([first, dataclasses.replace(_rec("node-wal"), role="walrus")])
    lines: list[tuple[str, str, str]] = []

    def emit(*line: str) -> None:
        lines.append((line[0], line[1], line[2]))
        if line[0] == "first":
            store.listed.append(later)  # registers while the first node's command runs

    try:
        followed = await follow_nodes(
            _config(tmp_path), store, ["work"], role="nc", cluster=None, parallel=4,
            timeout=10, quiet=0.3, emit=emit,
        )  # fmt: skip
    finally:
        fleet.close()
    assert [(r.name, r.returncode) for r in followed.results] == [("first", 0), ("next", 0)]
    assert lines == [("first", "out", "hello"), ("next", "out", "hello")]
    assert fleet.servers["node-first"].commands == fleet.servers["node-next"].commands == ["work"]
    assert followed.converged_after >= 0.3
    # a node's tunnel is looked up when its turn comes (it may have been added meanwhile)
    assert store.tunnel_asked == ["node-first", "node-next"]


class _Immediate:
    """Stands in for the event loop: hands each line on at once."""

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        fn(*args)


def test_output_is_cut_into_lines_per_stream_and_overlong_lines_into_pieces() -> None:
    got: list[tuple[str, str, str]] = []
    lines = _Lines("nc1", lambda *line: got.append(line), _Immediate())
    lines.feed("out", b"one\ntw")
    lines.feed("err", b"warn")
    lines.feed("out", b"o\r\nthr")
    lines.feed("err", b"ing\n\xff\n")
    lines.feed("out", b"x" * (LINE_LIMIT + 10))
    lines.flush()
    assert got == [
        ("nc1", "out", "one"),
        ("nc1", "out", "two\r"),  # as before: only the newline is taken off
        ("nc1", "err", "warning"),
        ("nc1", "err", "\ufffd"),  # not UTF-8: replaced, never an exception
        ("nc1", "out", "thr" + "x" * (LINE_LIMIT - 3)),
        ("nc1", "out", "x" * 13),
    ]
