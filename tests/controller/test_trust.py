"""Trust in the daemon, in-process: pending, approvals, denials, tokens, windows, the
queue bound.  The same daemon runs as a process against real sshd in
tests/integration/test_trust_on_the_lab.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from registration import load_config
from registration._trust import approve, create_token, deny, open_window, revoke_token
from registration.protocol import JoinToken, encode_node
from registration.state import NodeState, SqliteStore, StateStore
from support.harness import Harness, announcement, until

S = NodeState


class Admin:
    """The admin's commands, against the daemon's store from another handle (the CLI)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.store: StateStore | None = None

    async def __aenter__(self) -> StateStore:
        self.store = await SqliteStore.open(self.h.config.db_path, origin="cli:admin:1")
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        assert self.store is not None
        await self.store.close()


def signed(h: Harness, ann: object, token: JoinToken, *, skew: float = 0.0, **tamper: str) -> str:
    """Announce ``ann`` signed with ``token`` (optionally tampered after signing)."""
    txt = encode_node(ann, token=token, now=h.clock.time() + skew)  # type: ignore[arg-type]
    txt.update(tamper)
    name = f"{ann.role}-{ann.node_id}._autoreg._tcp.local."  # type: ignore[attr-defined]
    h.network.raw(name, 22, {k.encode(): v.encode() for k, v in txt.items()})
    return name


async def new_token(h: Harness, store: StateStore, **scope: object) -> JoinToken:
    joined, _ = await create_token(h.config, store, **scope)  # type: ignore[arg-type]
    await until(lambda: joined.token_id in h.daemon.reconciler.index.tokens, "the token")
    return joined


async def test_unsigned_waits_in_pending_and_costs_no_ssh(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h:
        h.network.announce(announcement("walrus01", "walrus"))
        rec = await h.state("walrus01", S.PENDING)
        assert "unsigned announcement: `autoreg approve walrus01`" in rec.reason
        await h.settle()
        assert h.script.calls == []  # no registration, so no SSH connection
        async with Admin(h) as store:
            approved = await approve(store, "walrus01")
        assert approved.approved_fp == rec.fingerprint
        await h.state("walrus01", S.REGISTERED)
        assert h.node("walrus01").granted == "approval"  # type: ignore[union-attr]


async def test_an_approval_pins_the_key_it_saw(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="approve") as h, Admin(h) as store:
        await store.set_lockdown("walrus", True)  # keep it from registering at once
        h.network.announce(announcement("walrus01", "walrus"))
        await h.state("walrus01", S.PENDING)
        await approve(store, "walrus01")
        await h.state("walrus01", S.LOCKED)
        # it goes away, and comes back with another key: the approval does not apply
        h.network.goodbye("walrus-walrus01._autoreg._tcp.local.", "_autoreg._tcp.local.")
        await until(lambda: not h.node("walrus01").present, "gone")  # type: ignore[union-attr]
        h.network.announce(announcement("walrus01", "walrus", fingerprint="SHA256:" + "K" * 43))
        await h.state("walrus01", S.PENDING)


async def test_a_denied_key_stays_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h:
        ann = announcement("walrus01", "walrus")
        h.network.announce(ann)
        await h.state("walrus01", S.PENDING)
        async with Admin(h) as store:
            await deny(store, "walrus01", reason="not ours")
            rec = await h.state("walrus01", S.REJECTED)
            assert "denied by admin: not ours" in rec.reason
            # forgotten, and announced again under another id: still denied
            await store.forget("walrus01", message="forgotten")
            h.network.announce(dataclasses.replace(ann, node_id="walrus02"))
            rec = await h.state("walrus02", S.REJECTED)
            assert "was denied by the admin (not ours)" in rec.reason
        assert h.script.calls == []


async def test_a_signed_node_registers_and_spends_its_token_once(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        token = await new_token(h, store, roles=["walrus"])
        signed(h, announcement("walrus01", "walrus"), token)
        rec = await h.state("walrus01", S.REGISTERED)
        assert rec.granted == f"token:{token.token_id}" and rec.auth == "signed"
        # it keeps announcing, signed anew: nothing more is spent
        h.clock.advance(400)
        signed(h, announcement("walrus01", "walrus"), token)
        await h.settle()
        (record,) = await store.tokens()
        assert record.used == 1 and record.used_by[0][0] == "walrus01"


@pytest.mark.parametrize(
    "tamper",
    [
        {"ip": "198.18.0.66"},
        {"fp": "SHA256:" + "Q" * 43},
        {"role": "cc", "cluster": "foo"},
        {"cluster": "bar"},
    ],
    ids=["ip", "fp", "role", "cluster"],
)
async def test_a_field_changed_after_signing_is_rejected(
    tmp_path: Path, tamper: dict[str, str]
) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        token = await new_token(h, store)
        node = announcement("sc000001", "sc", "foo")
        signed(h, node, token, **tamper)
        rec = await h.state("sc000001", S.REJECTED)
        assert "bad signature: the signature does not match" in rec.reason
        assert h.script.calls == []


async def test_a_stale_signature_is_a_replay(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        token = await new_token(h, store)
        signed(h, announcement("walrus01", "walrus"), token, skew=-3600)
        rec = await h.state("walrus01", S.REJECTED)
        assert "a replay, or a clock to fix" in rec.reason


@pytest.mark.parametrize("problem", ["revoked", "expired", "scope", "used up"])
async def test_a_token_that_does_not_admit_the_node_leaves_it_pending(
    tmp_path: Path, problem: str
) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        scope: dict[str, object] = {"ttl": 60 if problem == "expired" else 3600}
        if problem == "scope":
            scope["roles"] = ["cc"]
        token = await new_token(h, store, **scope)
        if problem == "revoked":
            await revoke_token(store, token.token_id)
        if problem == "expired":
            h.clock.advance(120)
        if problem == "used up":
            signed(h, announcement("walrus00", "walrus", ip="198.18.0.8"), token)
            await h.state("walrus00", S.REGISTERED)
            h.network.announce(announcement("cc000001", "cc", "foo"))  # (noise)
        await until(lambda: h.daemon.reconciler.index.token(token.token_id) is not None
                    and (problem != "revoked"
                         or h.daemon.reconciler.index.token(token.token_id).revoked),
                    "the token's state")  # type: ignore[union-attr]  # fmt: skip
        signed(h, announcement("walrus01", "walrus"), token)
        rec = await h.state("walrus01", S.PENDING)
        assert problem in rec.reason or (problem == "scope" and "is for cc" in rec.reason)
        assert "walrus01" not in h.script.calls


async def test_an_install_window_seals_after_n_registrations(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        window = await open_window(h.config, store, role="cc", duration=600, max_uses=2)
        await until(lambda: h.daemon.reconciler.index.window("cc", h.clock.time()),
                    "the window")  # fmt: skip
        for i, cluster in enumerate(("a", "b", "c")):
            h.network.announce(announcement(f"cc00000{i}", "cc", cluster))
        await h.state("cc000000", S.REGISTERED)
        await h.state("cc000001", S.REGISTERED)
        rec = await h.state("cc000002", S.PENDING)
        assert "unsigned announcement" in rec.reason
        (sealed,) = await store.windows()
        assert sealed.window_id == window.window_id and not sealed.is_open(h.clock.time())
        assert sealed.closed_reason == "sealed after 2 registrations"


async def test_an_install_window_closes_when_its_time_runs_out(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token") as h, Admin(h) as store:
        await open_window(h.config, store, role=None, duration=600)
        await until(lambda: h.daemon.reconciler.index.window("cc", h.clock.time()),
                    "the window")  # fmt: skip
        assert h.daemon._window_open() == "*"
        h.clock.advance(601)
        await until(lambda: any(w.closed for w in h.daemon.reconciler.index.windows),
                    "the window to close")  # fmt: skip
        (closed,) = await store.windows()
        assert closed.closed_reason == "its time ran out"
        h.network.announce(announcement("cc000001", "cc", "foo"))
        await h.state("cc000001", S.PENDING)


async def test_the_approval_queue_is_bounded(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="token", extra="max_pending = 10\n") as h:
        for i in range(50):
            h.network.announce(announcement(f"nc{i:06d}", "walrus", ip=f"198.18.1.{i + 1}"))
        await until(lambda: h.daemon.reconciler.index.count(S.PENDING) == 10, "ten pending")
        await h.settle()
        assert len(h.daemon.reconciler.index) == 10
        events = [e for e in await h.daemon.store.events() if e.kind == "pending-full"]
        assert events and "dropped, not stored" in events[0].message
        h.clock.advance(61)  # the next report, a minute later, counts the rest
        h.network.announce(announcement("nc999999", "walrus", ip="198.18.2.1"))
        await h.settle()
        events = [e for e in await h.daemon.store.events() if e.kind == "pending-full"]
        assert len(events) == 2
        assert sum(sum(e.data["dropped"].values()) for e in events) == 41


async def test_open_trust_registers_unsigned_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Harness(tmp_path, trust="open") as h:
        h.network.announce(announcement("walrus01", "walrus"))
        rec = await h.state("walrus01", S.REGISTERED)
        assert rec.granted == "open"
    assert any("trust = open" in r.getMessage() for r in caplog.records)


async def test_a_per_role_policy_overrides_the_registrars(tmp_path: Path) -> None:
    async with Harness(tmp_path, trust="open", extra="[role:walrus]\ntrust = approve\n") as h:
        assert load_config(h.config.path, env={}).profile.role("walrus").trust == "approve"  # type: ignore[arg-type,union-attr]
        h.network.announce(announcement("walrus01", "walrus"))
        h.network.announce(announcement("cc000001", "cc", "foo"))
        await h.state("cc000001", S.REGISTERED)
        rec = await h.state("walrus01", S.PENDING)
        assert "trust = approve" in rec.reason
