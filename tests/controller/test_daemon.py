"""The daemon built in-process: reconcile, retry timers, receipts, stop, start failures.

Real store (sqlite in tmp_path), real Daemon and Reconciler; an in-memory
transport, a fake clock and scripted registrations at their seams.  The netns
integration tests run the same daemon as a process against real sshd.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from registration import load_config
from registration._exceptions import AlreadyRunning, StateError, TransportError
from registration.controller import EXIT_INTERRUPTED, Daemon
from registration.state import (
    NodeState,
    Source,
    SqliteStore,
)
from support.harness import Harness, announcement, make_config, until
from support.records import fp_for, put

S = NodeState
OTHER_FP = "SHA256:" + "C" * 43


# -- reconcile --------------------------------------------------------------------------


async def test_dependents_wait_then_register_in_order(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("sc000001", "sc", "foo"))
        rec = await h.state("sc000001", S.WAITING)
        assert rec.reason == "waiting for cc of cluster foo to be registered"
        h.network.announce(announcement("walrus01", "walrus"))
        await h.state("walrus01", S.REGISTERED)
        h.network.announce(announcement("cc000001", "cc", "foo", fingerprint=OTHER_FP))
        await h.state("sc000001", S.REGISTERED)
        assert h.script.calls.index("cc000001") < h.script.calls.index("sc000001")
        assert sorted(h.script.calls) == ["cc000001", "sc000001", "walrus01"]


async def test_a_second_unique_node_is_refused_naming_the_holder(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("walrus01", "walrus", name="w1"))
        await h.state("walrus01", S.REGISTERED)
        h.network.announce(announcement("walrus02", "walrus", fingerprint=OTHER_FP))
        rec = await h.state("walrus02", S.REFUSED)
        assert "a walrus is already registered: w1 (walrus01" in rec.reason
        assert h.script.calls == ["walrus01"]


async def test_nodes_of_other_registrars_are_not_even_stored(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("nc000001", "nc", "foo"))
        h.network.announce(announcement("walrus01", "walrus"))
        await h.state("walrus01", S.REGISTERED)
        assert await h.daemon.store.get("nc000001") is None


async def test_a_retry_waits_for_its_timer(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.script.script["walrus01"] = ["unreachable", "registered"]
        h.network.announce(announcement("walrus01", "walrus"))
        rec = await h.state("walrus01", S.UNREACHABLE)
        assert rec.next_attempt == h.clock.now + h.script.retry_delay
        await h.settle()
        assert h.script.calls == ["walrus01"]  # nothing before the timer
        h.clock.advance(h.script.retry_delay - 1)
        await h.settle()
        assert h.script.calls == ["walrus01"]
        h.clock.advance(1)
        await h.state("walrus01", S.REGISTERED)
        assert h.script.calls == ["walrus01", "walrus01"]


async def test_a_receipt_is_resent_with_backoff_even_under_churn(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        ann = announcement("walrus01", "walrus")
        h.network.announce(ann)
        await h.state("walrus01", S.REGISTERED)
        # still announcing "ready": the receipt got lost.  Re-announcements (here: a
        # name change every 10 s) must not postpone the re-delivery forever.
        for i in range(3):
            h.clock.advance(10)
            h.network.announce(announcement("walrus01", "walrus", name=f"w{i}"))
            await h.settle()
        await until(lambda: h.script.receipts == ["walrus01"], "one re-delivery after 30 s")
        # then after 60 s, 120 s, ... (RECEIPT_RESEND_INTERVAL doubling, capped)
        h.clock.advance(59)
        await h.settle()
        assert h.script.receipts == ["walrus01"]
        h.clock.advance(1)
        await until(lambda: len(h.script.receipts) == 2, "the second re-delivery, 60 s later")
        # a node that says it is registered gets none
        h.network.announce(announcement("walrus01", "walrus", name="w9", state="registered"))
        await h.settle()
        h.clock.advance(600)
        await h.settle()
        assert len(h.script.receipts) == 2


async def test_changes_from_another_process_are_picked_up(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        admin = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
        try:
            await admin.set_lockdown("walrus", True)
            await until(lambda: h.daemon.reconciler.index.is_locked("walrus"), "the lockdown")
            h.network.announce(announcement("walrus01", "walrus"))
            await h.state("walrus01", S.LOCKED)
            await admin.set_lockdown("walrus", False)
            await h.state("walrus01", S.REGISTERED, timeout=10)
            # a manual registration: the same way in, another source
            await admin.ingest(
                announcement("cc000001", "cc", "foo", fingerprint=OTHER_FP),
                source=Source.MANUAL,
                instance="cc000001",
            )
            await h.state("cc000001", S.REGISTERED, timeout=10)
        finally:
            await admin.close()


# -- lost races -------------------------------------------------------------------------


async def test_a_node_forgotten_while_its_hook_runs_is_not_recreated(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.script.script["walrus01"] = ["block"]
        h.network.announce(announcement("walrus01", "walrus"))
        await asyncio.wait_for(h.script.blocked.wait(), 5)
        admin = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
        try:
            await admin.forget("walrus01", message="forgotten by admin (was registering)")
        finally:
            await admin.close()
        await until(lambda: h.node("walrus01") is None, "the daemon to see the forget")
        h.script.release.set()
        await until(lambda: h.script.results, "the outcome")
        assert h.script.results == [None]  # the compare-and-set refused it
        await h.settle()
        assert await h.daemon.store.get("walrus01") is None
        kinds = [e.kind for e in await h.daemon.store.events(node_id="walrus01")]
        assert kinds[-1] == "forgotten" and "registered" not in kinds


# -- stopping and starting --------------------------------------------------------------


async def test_stop_during_a_hook_records_interrupted_and_exits_130(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.__aenter__()
    h.script.script["walrus01"] = ["block"]
    h.network.announce(announcement("walrus01", "walrus"))
    await asyncio.wait_for(h.script.blocked.wait(), 5)
    assert await h.stop() == EXIT_INTERRUPTED
    store = await SqliteStore.open(h.config.db_path, readonly=True, origin="t")
    try:
        rec = await store.get("walrus01")
        assert rec is not None and rec.state is S.INTERRUPTED
        last = (await store.last_events(1))[0]
        assert "interrupted the hook of walrus01" in last.message
    finally:
        await store.close()
    assert not (h.config.state_dir / "daemon.json").exists()


async def test_a_clean_stop_exits_0(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        assert (h.config.state_dir / "daemon.json").exists()
        status = json.loads((h.config.state_dir / "daemon.json").read_text())
        assert status["store"] == "sqlite" and status["owner"] == h.daemon.owner
    assert h.task is not None and h.task.result() == 0
    assert h.script.closed and h.transport.closed


async def test_a_failed_start_releases_everything(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.transport.fail_start = TransportError("no mDNS socket")
    with pytest.raises(TransportError):
        await h.daemon.run()
    assert h.daemon._io._pool._shutdown  # type: ignore[attr-defined]
    assert not (h.config.state_dir / "daemon.json").exists()
    # the store and its lock were released: a daemon starts on it at once
    async with Harness(tmp_path) as again:
        assert again.daemon._locked


async def test_a_second_daemon_on_the_same_store_is_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path) as first:
        second = Harness(tmp_path)
        with pytest.raises(AlreadyRunning, match="already runs"):
            await second.daemon.run()
        # the refused one touched nothing of the running one's
        assert (first.config.state_dir / "daemon.json").exists()
        assert not second.transport.started
        first.network.announce(announcement("walrus01", "walrus"))
        await first.state("walrus01", S.REGISTERED)
        assert second.script.calls == []


async def test_recovery_holds_an_interrupted_hook_and_restarts_an_unstarted_one(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    store = await SqliteStore.open(config.db_path, origin="dead-daemon")
    try:  # what a daemon killed mid-registration leaves behind
        await put(store, "walrus01", S.REGISTERING, role="walrus", cluster=None,
                  fields={"hook_started": True})  # fmt: skip
        await put(store, "cc000001", S.REGISTERING, role="cc", fingerprint=OTHER_FP,
                  ip="198.18.0.9")  # where it announces again  # fmt: skip
    finally:
        await store.close()
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("cc000001", "cc", "foo", fingerprint=OTHER_FP))
        rec = await h.state("walrus01", S.INTERRUPTED)
        assert "autoreg retry walrus01" in rec.reason
        await h.state("cc000001", S.REGISTERED)
        assert h.script.calls == ["cc000001"]


async def test_a_failing_pass_backs_off_and_logs_one_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Harness(tmp_path) as h:
        store = h.daemon.store
        real_change_many = store.change_many
        failures = {"left": 3}

        async def flaky(changes: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise StateError("database is locked")
            return await real_change_many(changes)

        store.change_many = flaky  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING):
            h.network.announce(announcement("walrus01", "walrus"))
            await until(lambda: failures["left"] == 2, "the first failure")
            await h.settle()
            assert failures["left"] == 2  # no busy loop: it waits for its backoff
            h.clock.advance(0.5)
            await until(lambda: failures["left"] == 1, "the second attempt")
            h.clock.advance(1.0)
            await until(lambda: failures["left"] == 0, "the third attempt")
            h.clock.advance(2.0)
            await h.state("walrus01", S.REGISTERED)
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1
        assert any("failed again (3 in a row)" in r.getMessage() for r in caplog.records)


# -- hostile announcements ----------------------------------------------------------------

ATTACKER_FP = "SHA256:" + "E" * 43


async def test_relabelling_a_registered_node_is_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("cc000001", "cc", "foo", name="cc1"))
        await h.state("cc000001", S.REGISTERED)
        # the CC's address, port and key, under a new id and another role
        relabel = announcement("evil0001", "walrus", fingerprint=fp_for("cc000001"))
        h.network.announce(relabel)
        rec = await h.state("evil0001", S.REFUSED)
        assert "belongs to cc cc1 (cc000001)" in rec.reason
        h.network.announce(announcement("walrus01", "walrus", ip="198.18.0.10"))
        await h.state("walrus01", S.REGISTERED)  # the real Walrus is not refused
        assert sorted(h.script.calls) == ["cc000001", "walrus01"]
        # forgetting the holder frees the key: the relabelled id is then decided anew
        admin = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
        try:
            await admin.forget("cc000001", message="forgotten by admin")
        finally:
            await admin.close()
        # (it is a second Walrus, so it is refused again: for that reason now)
        await until(
            lambda: "a walrus is already registered" in h.node("evil0001").reason,  # type: ignore[union-attr]
            "re-decided",
        )


async def test_a_second_key_for_a_waiting_node_is_a_conflict_and_nothing_registers(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path) as h:
        admin = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
        try:
            await admin.set_lockdown("walrus", True)
            await until(lambda: h.daemon.reconciler.index.is_locked("walrus"), "the lockdown")
            h.network.announce(announcement("walrus01", "walrus"))
            await h.state("walrus01", S.LOCKED)
            h.network.raw(  # the attacker's own instance name, the victim's id
                "walrus-x.evil._autoreg._tcp.local.",
                22,
                {b"v": b"1", b"role": b"walrus", b"id": b"walrus01", b"ip": b"198.18.0.66",
                 b"fp": ATTACKER_FP.encode(), b"state": b"ready"},
            )  # fmt: skip
            rec = await h.state("walrus01", S.CONFLICT)
            assert rec.fingerprint == fp_for("walrus01") and rec.ip == "198.18.0.9"
            await admin.set_lockdown("walrus", False)
            await h.settle()
            rec = await h.state("walrus01", S.CONFLICT)
            assert h.script.calls == []  # neither key is registered
            events = [e.kind for e in await h.daemon.store.events(node_id="walrus01")]
            assert "conflict" in events
        finally:
            await admin.close()


async def test_another_instances_goodbye_does_not_hide_a_node(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.script.script["walrus01"] = ["unreachable", "registered"]
        h.network.announce(announcement("walrus01", "walrus"))
        await h.state("walrus01", S.UNREACHABLE)
        evil = "walrus-evil._autoreg._tcp.local."
        h.network.raw(evil, 22, {b"v": b"1", b"role": b"walrus", b"id": b"walrus01",
                                 b"ip": b"198.18.0.9", b"fp": fp_for("walrus01").encode(),
                                 b"state": b"ready"})  # fmt: skip
        await h.settle()
        h.network.goodbye(evil, "_autoreg._tcp.local.")
        await h.settle()
        rec = h.node("walrus01")
        assert rec is not None and rec.present  # still announced by its own instance
        h.clock.advance(h.script.retry_delay)
        await h.state("walrus01", S.REGISTERED)


async def test_a_registered_node_moves_only_to_an_address_with_its_key(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("walrus01", "walrus", name="w1"))
        await h.state("walrus01", S.REGISTERED)
        h.script.move_verdicts = [False]  # the new address presents another key
        h.network.announce(announcement("walrus01", "walrus", name="w1", ip="198.18.0.66"))
        await until(lambda: h.script.moves_checked, "the check")
        await until(lambda: h.node("walrus01").moved is None, "the verdict")  # type: ignore[union-attr]
        rec = h.node("walrus01")
        assert rec is not None and rec.ip == "198.18.0.9"
        last = (await h.daemon.store.last_events(1, node_id="walrus01"))[0]
        assert last.kind == "move-refused" and "possible spoofing" in last.message
        # a real move: the new address presents the registered key
        h.script.move_verdicts = [None, True]  # no answer at first, then verified
        h.network.announce(announcement("walrus01", "walrus", name="w1", ip="198.18.0.77"))
        await until(lambda: len(h.script.moves_checked) == 2, "the second check")
        await h.settle()
        assert h.node("walrus01").ip == "198.18.0.9"  # type: ignore[union-attr]
        h.clock.advance(30)
        await until(lambda: h.node("walrus01").ip == "198.18.0.77", "the move")  # type: ignore[union-attr]
        assert h.script.calls == ["walrus01"]  # never registered again


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1"),
        ("169.254.1.1", "link-local"),
        ("198.18.0.1", "one of this registrar's own addresses"),
    ],
)
async def test_addresses_that_lead_nowhere_or_home_are_refused(
    tmp_path: Path, ip: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "registration.controller._daemon.local_addresses", lambda: frozenset({"198.18.0.1"})
    )
    async with Harness(tmp_path) as h:
        h.network.announce(announcement("walrus01", "walrus", ip=ip))
        await h.settle()
        assert await h.daemon.store.get("walrus01") is None
        events = await h.daemon.store.events(node_id="walrus01")
        assert [e.kind for e in events] == ["rejected-announcement"]
        assert why in events[0].message


async def test_allow_addresses_admits_a_network(tmp_path: Path) -> None:
    conf = tmp_path / "autoreg.conf"
    h = Harness(tmp_path)
    conf.write_text(conf.read_text() + "allow_addresses = 127.0.0.0/8\n")
    h.config = load_config(conf, env={})
    h.daemon = Daemon(h.config, transport=h.transport, clock=h.clock, registrations=h._bind)
    async with h:
        h.network.announce(announcement("walrus01", "walrus", ip="127.0.0.5"))
        await h.state("walrus01", S.REGISTERED)
