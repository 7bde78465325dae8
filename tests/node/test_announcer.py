"""The announcer keeps announcing until it holds its receipt, then answers queries only."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from registration import load_config
from registration.node import _announcer
from registration.node._announcer import Announcer
from registration.transport import ResolvedService
from support.harness import until
from support.inprocess import MemoryNetwork, MemoryTransport

NODE_TYPE = "_autoreg._tcp.local."


class Heard:
    """A browser on the in-memory network: every announcement, with its state."""

    def __init__(self) -> None:
        self.states: list[str] = []

    def service_resolved(self, service: ResolvedService) -> None:
        self.states.append((service.properties.get(b"state") or b"").decode())

    def service_removed(self, name: str) -> None:
        self.states.append("goodbye")

    def service_unusable(self, name: str, reason: str) -> None:
        raise AssertionError(f"{name}: {reason}")


@pytest.fixture
def node_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    key = tmp_path / "host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    conf = tmp_path / "autoreg.conf"
    conf.write_text(
        "[autoreg]\n"
        f"state_dir = {tmp_path / 'state'}\n"
        "[node]\n"
        "role = nc\ncluster = foo\nid = nc000001\naddress = 198.18.0.7\n"
        f"host_key = {key}.pub\n"
        f"receipt_path = {tmp_path / 'receipt.json'}\n"
        "poll_interval = 0.02\n"
    )
    return load_config(conf, env={})


async def test_it_announces_again_with_backoff_until_it_holds_its_receipt(
    node_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(_announcer, "REANNOUNCE_INITIAL", 0.02)
    monkeypatch.setattr(_announcer, "REANNOUNCE_MAX", 0.08)
    monkeypatch.setattr(_announcer, "REANNOUNCE_JITTER", 0.0)
    network = MemoryNetwork()
    heard = Heard()
    network.browsers.append((NODE_TYPE, heard))
    transport = MemoryTransport(network)
    await transport.start()
    announcer = Announcer(node_config, transport=transport)
    task = asyncio.ensure_future(announcer.run())
    try:
        # the first announcement, then unchanged ones: 0.02, 0.04, 0.08, 0.08, ... apart
        await until(lambda: transport.reannounced >= 5, "five re-announcements", timeout=10)
        assert set(heard.states) == {"ready"}
        node_config.node.receipt_path.write_text(
            json.dumps({"node_id": "nc000001", "registrar_role": "cc"})
        )
        await until(lambda: "registered" in heard.states, "state=registered", timeout=10)
        after = transport.reannounced
        await asyncio.sleep(0.5)  # six times the longest interval: nothing more comes
        assert transport.reannounced == after
        assert heard.states[-1] == "registered"
    finally:
        announcer.stop()
        await asyncio.wait_for(task, 10)
    assert heard.states[-1] == "goodbye"
    assert not transport.closed  # the caller's transport: closed by the caller
