"""Trust in the store: tokens spent once per node and in the slot's transaction, install
windows that seal themselves, denied keys, approvals, and the default for upgrades.

Run against every backend (the ``store`` fixture of ``conftest.py``), but the upgrade
from a sqlite store made before trust existed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from registration.protocol import new_token
from registration.state import (
    Change,
    LostRace,
    NodeRecord,
    NodeState,
    SqliteStore,
    StateStore,
    Token,
    Window,
)
from registration.state._schema import MIGRATIONS
from support.records import OWNER, put

S = NodeState


def token(uses: int = 1, **changes: object) -> Token:
    joined = new_token()
    base: dict[str, object] = {
        "token_id": joined.token_id,
        "key": joined.key,
        "roles": ("nc",),
        "cluster": "foo",
        "uses": uses,
        "expires": time.time() + 3600,
        "created": time.time(),
    }
    base.update(changes)
    return Token(**base)  # type: ignore[arg-type]


async def register(store: StateStore, rec: NodeRecord, grant: str) -> NodeRecord:
    if rec.state is not S.QUEUED:
        rec = await store.change(
            rec.node_id,
            Change(expect=rec.state, to=S.QUEUED, reason="r", kind="queued",
                   generation=rec.generation),
        )  # fmt: skip
    return await store.change(
        rec.node_id,
        Change(expect=rec.state, to=S.REGISTERING, reason="r", kind="registering", owner=OWNER,
               generation=rec.generation, grant=grant),
    )  # fmt: skip


async def test_a_token_is_spent_once_per_node_in_the_registering_transaction(
    store: StateStore,
) -> None:
    tok = await store.create_token(token(uses=1))
    first = await register(store, await put(store, "node0001"), f"token:{tok.token_id}")
    assert first.granted == f"token:{tok.token_id}"
    (spent,) = await store.tokens()
    assert spent.used_by[0][:2] == ("node0001", first.fingerprint) and spent.uses_left == 0
    # the same node again (its retry) spends nothing; another node finds it used up
    failed = await store.change(
        "node0001",
        Change(expect=S.REGISTERING, to=S.FAILED, reason="r", kind="k", owner=OWNER,
               fields={"next_attempt": 1.0}),
    )  # fmt: skip
    again = await register(store, failed, f"token:{tok.token_id}")
    assert again.state is S.REGISTERING and (await store.tokens())[0].used == 1
    second = await put(store, "node0002")
    with pytest.raises(LostRace, match="used up"):
        await register(store, second, f"token:{tok.token_id}")
    assert (await store.get("node0002")).state is S.QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"expires": time.time() - 1}, "expired"),
        ({"roles": ("cc",)}, "is for cc"),
        ({"cluster": "bar"}, "of cluster bar"),
    ],
)
async def test_a_token_that_does_not_cover_the_node_admits_nothing(
    store: StateStore, changes: dict[str, object], why: str
) -> None:
    tok = await store.create_token(token(**changes))
    with pytest.raises(LostRace, match=why):
        await register(store, await put(store, "node0001"), f"token:{tok.token_id}")


async def test_a_revoked_token_admits_nothing_and_list_never_shows_a_secret(
    store: StateStore,
) -> None:
    tok = await store.create_token(token(uses=5))
    revoked = await store.revoke_token(tok.token_id)
    assert revoked is not None and revoked.revoked is not None
    with pytest.raises(LostRace, match="revoked"):
        await register(store, await put(store, "node0001"), f"token:{tok.token_id}")
    assert "key" not in revoked.to_json()
    assert await store.revoke_token("nosuchtoken") is None


async def test_a_window_seals_itself_after_its_last_registration(store: StateStore) -> None:
    now = time.time()
    window = await store.open_window(
        Window(window_id="w1", scope="nc", opened=now, expires=now + 600, max_uses=2)
    )
    for node_id in ("node0001", "node0002"):
        await register(store, await put(store, node_id), f"window:{window.window_id}")
    (sealed,) = await store.windows()
    assert (sealed.used, sealed.closed_reason) == (2, "sealed after 2 registrations")
    assert not sealed.is_open(time.time())
    with pytest.raises(LostRace, match="closed"):
        await register(store, await put(store, "node0003"), f"window:{window.window_id}")
    events = [e.message for e in await store.events() if e.kind == "window"]
    assert events[-1].endswith("closed: sealed after 2 registrations")


async def test_windows_close_and_replace(store: StateStore) -> None:
    now = time.time()
    await store.open_window(Window("w1", "*", now, now + 600, None))
    await store.open_window(Window("w2", "*", now, now + 600, None))  # replaces w1
    windows = {w.window_id: w for w in await store.windows()}
    assert windows["w1"].closed_reason == "replaced" and windows["w2"].is_open(now)
    closed = await store.close_windows(None, reason="closed by admin")
    assert [w.window_id for w in closed] == ["w2"]
    assert await store.close_windows(None, reason="again") == []


async def test_deny_and_approve(store: StateStore) -> None:
    rec = await put(store, "node0001", S.PENDING)
    await store.deny("node0001", rec.fingerprint, reason="not ours")
    assert await store.denied() == {rec.fingerprint: "not ours"}
    approved = await store.approve("node0001", fingerprint=rec.fingerprint,
                                   generation=rec.generation)  # fmt: skip
    assert (approved.state, approved.approved_fp) == (S.SEEN, rec.fingerprint)
    assert await store.denied() == {}  # approving a denied key allows it again
    with pytest.raises(LostRace, match="not SHA256"):
        await store.approve("node0001", fingerprint="SHA256:" + "Z" * 43,
                            generation=approved.generation)  # fmt: skip


async def test_a_new_store_defaults_to_token(store: StateStore) -> None:
    assert await store.setting("trust_default") == "token"


def test_a_store_upgraded_from_a_version_without_trust_stays_open(tmp_path: Path) -> None:
    db = tmp_path / "autoreg.db"
    conn = sqlite3.connect(db)
    for migration in MIGRATIONS[:4]:
        conn.executescript(migration)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO events (ts, kind, message) VALUES (1, 'daemon', 'registrar clc started')"
    )
    conn.commit()
    conn.close()

    async def check() -> None:
        store = await SqliteStore.open(db, origin="test")
        try:
            assert await store.setting("trust_default") == "open"
        finally:
            await store.close()

    asyncio.run(check())
