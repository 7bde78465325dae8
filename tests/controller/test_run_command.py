"""Commands over a verified session (VerifiedSession.run_command), without a network.

The server is paramiko's own, in this process, over a socket pair
(``support.fake_sshd``): scripted commands that write, exit, hang, or end
without an exit status.  The same code against real sshd on every path is in
tests/integration/test_exec_fanout.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from registration._exceptions import CommandTimeout, SSHError
from support.fake_sshd import FakeSshd, connected, hangs, quiet_then_exits, writes

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sshd() -> Iterator[FakeSshd]:
    server = FakeSshd(
        {
            "both": writes(b"one\ntwo\nno newline", b"warn\n", status=3),
            "ok": writes(b"fine\n"),
            "signal": writes(b"partial\n", status=None),
            "hang": hangs(b"started\n"),
            "quiet": quiet_then_exits(0.5, status=7),
        }
    )
    try:
        yield server
    finally:
        server.close()


def joined(chunks: list[tuple[str, bytes]], stream: str) -> bytes:
    return b"".join(data for which, data in chunks if which == stream)


def test_output_of_both_streams_and_the_exit_status(sshd: FakeSshd) -> None:
    session = connected(sshd)
    chunks: list[tuple[str, bytes]] = []
    code = session.run_command("both", timeout=10, output=lambda s, d: chunks.append((s, d)))
    assert code == 3
    assert joined(chunks, "out") == b"one\ntwo\nno newline"
    assert joined(chunks, "err") == b"warn\n"
    # the connection stays usable: a second command on the same session
    assert session.run_command("ok", timeout=10, output=lambda s, d: chunks.append((s, d))) == 0
    assert sshd.commands == ["both", "ok"]
    session.close()


def test_no_exit_status_is_none(sshd: FakeSshd) -> None:
    session = connected(sshd)
    chunks: list[tuple[str, bytes]] = []
    code = session.run_command("signal", timeout=10, output=lambda s, d: chunks.append((s, d)))
    assert code is None
    assert joined(chunks, "out") == b"partial\n"
    session.close()


def test_timeout_closes_the_channel_and_names_the_node() -> None:
    ended = threading.Event()
    sshd = FakeSshd({"hang": hangs(b"started\n", ended)})
    session = connected(sshd, "node7")
    chunks: list[tuple[str, bytes]] = []
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        session.run_command("hang", timeout=0.3, output=lambda s, d: chunks.append((s, d)))
    assert 0.3 <= time.monotonic() - started < 5
    assert str(info.value) == "node7:22: timed out after 0.3s"
    assert joined(chunks, "out") == b"started\n"
    assert ended.wait(5), "the server never saw the channel closed"
    session.close()
    sshd.close()


def test_waiting_for_the_exit_status_after_eof_does_not_spin(sshd: FakeSshd) -> None:
    """EOF keeps the channel's descriptor readable: the wait must not become a busy loop."""
    session = connected(sshd)
    cpu = time.thread_time()
    wall = time.monotonic()
    assert session.run_command("quiet", timeout=10, output=lambda s, d: None) == 7
    assert time.monotonic() - wall >= 0.45
    assert time.thread_time() - cpu < 0.2, "busy-waited for the exit status"
    session.close()


def test_closing_the_session_ends_a_running_command_at_once(sshd: FakeSshd) -> None:
    session = connected(sshd)
    arrived = threading.Event()
    outcome: list[object] = []

    def output(stream: str, data: bytes) -> None:
        arrived.set()

    def run() -> None:
        try:
            outcome.append(session.run_command("hang", timeout=60, output=output))
        except SSHError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert arrived.wait(10)
    started = time.monotonic()
    session.close()  # what `exec` does to every running node on Ctrl-C
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert outcome == [None] or isinstance(outcome[0], SSHError), outcome


def test_a_refused_command_is_an_ssh_error(sshd: FakeSshd) -> None:
    session = connected(sshd)
    with pytest.raises(SSHError, match="running the command failed"):
        session.run_command("not scripted", timeout=10, output=lambda s, d: None)
    session.close()


def test_a_closed_session_cannot_run_a_command(sshd: FakeSshd) -> None:
    session = connected(sshd)
    session.close()
    with pytest.raises(SSHError) as info:
        session.run_command("ok", timeout=10, output=lambda s, d: None)
    assert info.value.__cause__ is not None  # mapped at the boundary, from paramiko's error
