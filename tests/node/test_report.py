"""A node with [node] registrar: it posts its signed record over HTTPS, follows its
state, and always says in one line why it is not registered yet (log, announce.json,
`autoreg status`).  Against the in-process daemon's real endpoint on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registration import load_config
from registration._config import Config
from registration._tls import api_identity_init
from registration._trust import create_token
from registration.node import _report, read_node_status
from registration.node._announcer import Announcer
from registration.protocol import JoinToken
from registration.state import NodeState, SqliteStore
from support.harness import Harness, until
from support.inprocess import MemoryNetwork, MemoryTransport

S = NodeState


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_report, "REPOST_INITIAL", 0.05)
    monkeypatch.setattr(_report, "REPOST_MAX", 0.2)
    monkeypatch.setattr(_report, "FOLLOW_INITIAL", 0.05)
    monkeypatch.setattr(_report, "FOLLOW_MAX", 0.2)
    monkeypatch.setattr(_report, "RETRY_MAX", 0.2)


def node_config(
    tmp_path: Path, url: str, pin: str, *, role: str = "walrus", cluster: str | None = None,
    token: JoinToken | None = None, node_id: str = "node0001",
) -> Config:  # fmt: skip
    key = tmp_path / f"{node_id}_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)  # fmt: skip
    conf = tmp_path / f"{node_id}.conf"
    conf.write_text(
        "[node]\n"
        f"role = {role}\nid = {node_id}\naddress = 198.18.0.7\nname = n1\n"
        + (f"cluster = {cluster}\n" if cluster else "")
        + (f"token = {token}\n" if token else "")
        + f"host_key = {key}.pub\nreceipt_path = {tmp_path / node_id / 'receipt.json'}\n"
        f"poll_interval = 0.05\nregistrar = {url}\nregistrar_fingerprint = {pin}\n"
    )
    (tmp_path / node_id).mkdir()
    return load_config(conf, env={})


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Announcer]:
    """The announcer on an mDNS network of its own: the registrar can only hear HTTPS."""
    transport = MemoryTransport(MemoryNetwork())
    await transport.start()
    announcer = Announcer(config, transport=transport)
    task = asyncio.ensure_future(announcer.run())
    try:
        yield announcer
    finally:
        announcer.stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def registrar(tmp_path: Path) -> AsyncIterator[tuple[Harness, str, str]]:
    identity, _ = api_identity_init(tmp_path / "keys")
    async with Harness(tmp_path, trust="token", extra="listen = 127.0.0.1:0\n") as h:
        url = json.loads((h.config.state_dir / "daemon.json").read_text())["api"]
        yield h, url, identity.fingerprint


async def token(h: Harness, **scope: object) -> JoinToken:
    store = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
    try:
        joined, _ = await create_token(h.config, store, **scope)  # type: ignore[arg-type]
    finally:
        await store.close()
    await until(lambda: joined.token_id in h.daemon.reconciler.index.tokens, "the token")
    return joined


async def test_it_posts_follows_its_state_and_stops_once_it_holds_its_receipt(
    tmp_path: Path,
) -> None:
    async with registrar(tmp_path) as (h, url, pin):
        config = node_config(tmp_path, url, pin, token=await token(h, roles=["walrus"]))
        async with running(config) as announcer:
            await h.state("node0001", S.REGISTERED)
            report = announcer.report
            await until(lambda: "receipt has not arrived" in report.line, lambda: report.line)
            assert report.line == (
                f"not registered yet: {url} registered it; its receipt has not arrived on this "
                "node yet"
            )
            config.node.receipt_path.write_text(
                json.dumps({"node_id": "node0001", "registrar_role": "clc"})
            )
            await until(lambda: report.registered, lambda: report.line)
            assert report.line.startswith("registered (receipt from clc at ")
            posts = report.posts
            await asyncio.sleep(0.5)  # more than twice the longest repost interval
            assert report.posts == posts  # a registered node posts no more
            status = read_node_status(config)
            assert status is not None and (status["registered"], status["running"]) == (True, True)
        status = read_node_status(config)
        assert status is not None and status["running"] is False
        assert h.script.calls == ["node0001"]


@pytest.mark.parametrize(
    ("scope", "words"),
    [
        ({"roles": ["cc"], "cluster": "foo"}, "pending approval at {url}: token "),
        (None, "no join token to sign with, and {url} takes signed announcements only"),
    ],
    ids=["pending", "unsigned"],
)
async def test_it_says_why_it_is_not_registered(
    tmp_path: Path, scope: dict[str, object] | None, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registration.node._report")
    async with registrar(tmp_path) as (h, url, pin):
        joined = await token(h, **scope) if scope else None
        config = node_config(tmp_path, url, pin, token=joined)
        async with running(config) as announcer:
            expected = "not registered yet: " + words.format(url=url)
            await until(lambda: announcer.report.line.startswith(expected),
                        lambda: announcer.report.line)  # fmt: skip
            status = read_node_status(config)
            assert status is not None and status["line"] == announcer.report.line
        assert any(expected in r.getMessage() for r in caplog.records)


async def test_an_sc_before_its_cc_says_it_waits_for_the_cc(tmp_path: Path) -> None:
    async with registrar(tmp_path) as (h, url, pin):
        joined = await token(h, roles=["sc"], cluster="foo")
        config = node_config(tmp_path, url, pin, role="sc", cluster="foo", token=joined)
        async with running(config) as announcer:
            await until(lambda: "waiting at" in announcer.report.line,
                        lambda: announcer.report.line)  # fmt: skip
            assert "cc of cluster foo" in announcer.report.line


async def test_no_registrar_answering_is_a_warning_and_it_keeps_trying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity, _ = api_identity_init(tmp_path / "keys")
    config = node_config(tmp_path, "https://127.0.0.1:1", identity.fingerprint,
                         token=JoinToken("abcdef1", "s" * 24))  # fmt: skip
    async with running(config) as announcer:
        await until(lambda: "no registrar answering" in announcer.report.line,
                    lambda: announcer.report.line)  # fmt: skip
        assert announcer.report.line.startswith(
            "not registered yet: no registrar answering at https://127.0.0.1:1"
        )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no registrar answering at https://127.0.0.1:1" in r.getMessage() for r in warned)


def test_status_on_a_node_shows_the_line_escaped_and_whether_the_announcer_runs(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from registration.cli import cli

    conf = tmp_path / "autoreg.conf"
    receipt = tmp_path / "node" / "receipt.json"
    receipt.parent.mkdir()
    conf.write_text(f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path}\n"
                    f"[node]\nreceipt_path = {receipt}\n")  # fmt: skip
    line = "not registered yet: pending approval at https://x:8443: \x1b[2Jhostile"
    (receipt.parent / "announce.json").write_text(
        json.dumps({"pid": 2**22 + 1, "line": line, "registered": False})
    )
    result = CliRunner().invoke(cli, ["-c", str(conf), "status"])
    assert result.exit_code == 0, result.output
    assert (
        "node: not registered yet: pending approval at https://x:8443: \\x1b[2Jhostile "
        "(announcer not running)"
    ) in result.output
    report = json.loads(CliRunner().invoke(cli, ["-c", str(conf), "status", "--json"]).output)
    # --json is escaped too (docs/security.md: every string of it)
    assert report["node"]["line"] == line.replace("\x1b", "\\x1b")
    assert report["node"]["running"] is False
