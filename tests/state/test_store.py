"""The sqlite state store (registration/state/_store.py)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration._exceptions import NodeNotFound, StateError
from registration.state import GLOBAL_SCOPE, SCHEMA_VERSION, NodeRecord, NodeState, Store
from registration.state import _store as store_module

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


def record(node_id: str, **changes: object) -> NodeRecord:
    base = NodeRecord(
        node_id=node_id,
        role="nc",
        cluster="foo",
        name=None,
        ip="198.18.0.5",
        port=22,
        fingerprint=FP,
        key_type="ssh-ed25519",
        announced_state="ready",
        source="mdns",
        present=True,
        state=NodeState.SEEN,
        reason="",
        attempts=0,
        next_attempt=None,
        path=None,
        hook_pid=None,
        resumed=False,
        first_seen=1000.0,
        last_seen=1000.0,
        updated=1000.0,
        registered_at=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "autoreg.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


# -- opening ----------


def test_new_store_has_current_schema_and_wal(store: Store, db: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"nodes", "lockdown", "events"} <= tables
    migrations = [e for e in store.events() if e.kind == "schema"]
    assert len(migrations) == SCHEMA_VERSION
    assert oct(db.stat().st_mode & 0o777) == oct(0o640)


def test_reopening_does_not_migrate_again(db: Path) -> None:
    with Store(db) as first:
        first.save(record("node0001"), kind="seen", message="hello")
    with Store(db) as second:
        assert second.schema_version == SCHEMA_VERSION
        assert [e.kind for e in second.events()].count("schema") == SCHEMA_VERSION
        assert second.get("node0001") is not None


def test_newer_schema_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StateError, match="newer than this autoreg"):
            Store(db, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True])
def test_corrupt_file_is_a_state_error(db: Path, readonly: bool) -> None:
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 2\x00" + os.urandom(8192))
    with pytest.raises(StateError) as info:
        Store(db, readonly=readonly)
    assert str(db) in str(info.value)
    assert not isinstance(info.value, sqlite3.Error)


def test_readonly_open_of_missing_db(db: Path) -> None:
    with pytest.raises(StateError, match="no state database"):
        Store(db, readonly=True)
    assert not db.exists()
    assert not db.parent.exists()


# -- nodes ----------


def test_save_and_get_round_trip(store: Store) -> None:
    rec = record(
        "node0001",
        name="node1",
        state=NodeState.REGISTERED,
        present=False,
        resumed=True,
        next_attempt=12.5,
        hook_pid=4242,
        registered_at=99.0,
    )
    assert store.save(rec, kind="registered", message="done") == rec
    assert store.get("node0001") == rec
    assert store.get("node0002") is None


def test_save_replaces(store: Store) -> None:
    store.save(record("node0001"), kind="seen", message="one")
    store.save(record("node0001", state=NodeState.WAITING, reason="cc"), kind="wait", message="two")
    nodes = store.nodes()
    assert len(nodes) == 1
    assert nodes[0].state is NodeState.WAITING
    assert nodes[0].reason == "cc"


def test_each_save_appends_exactly_one_event(store: Store) -> None:
    before = store.events()
    store.save(record("node0001"), kind="seen", message="first", data={"why": 1})
    store.save(record("node0001", state=NodeState.LOCKED), kind="locked", message="second")
    new = store.events(after=before[-1].seq)
    assert [(e.node_id, e.kind, e.state, e.message) for e in new] == [
        ("node0001", "seen", "seen", "first"),
        ("node0001", "locked", "locked", "second"),
    ]
    assert new[0].data == {"why": 1}
    assert new[1].data == {}


def test_update_changes_only_the_named_fields(store: Store) -> None:
    store.save(record("node0001", reason="start"), kind="seen", message="")
    count = len(store.events())
    # two writers holding stale copies: each names only the columns it owns
    store.update("node0001", {"last_seen": 2000.0, "present": False})
    after = store.update(
        "node0001",
        {"state": NodeState.WAITING, "reason": "waiting for cc"},
        kind="wait",
        message="needs a cc",
        data={"role": "cc"},
    )
    assert after is not None
    assert (after.state, after.reason, after.last_seen, after.present) == (
        NodeState.WAITING,
        "waiting for cc",
        2000.0,
        False,
    )
    assert store.get("node0001") == after
    new_events = store.events()[count:]
    assert [(e.kind, e.state, e.message, e.data) for e in new_events] == [
        ("wait", "waiting", "needs a cc", {"role": "cc"})
    ]  # the quiet update logged nothing


@pytest.mark.parametrize("field", ["node_id", "first_seen", "colour"])
def test_update_refuses_other_fields(store: Store, field: str) -> None:
    store.save(record("node0001"), kind="seen", message="")
    with pytest.raises(ValueError, match=field):
        store.update("node0001", {field: "x", "reason": "changed"})
    rec = store.get("node0001")
    assert rec is not None
    assert rec.reason == ""


def test_update_of_a_missing_node(store: Store) -> None:
    count = len(store.events())
    assert store.update("ghost001", {"reason": "x"}, kind="k", message="m") is None
    assert len(store.events()) == count


def test_node_and_event_are_atomic(store: Store, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(record("node0001"), kind="seen", message="first")
    events_before = store.events()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_module, "_insert_event", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.save(record("node0002"), kind="seen", message="second")
    with pytest.raises(RuntimeError):
        store.save(record("node0001", state=NodeState.FAILED), kind="failed", message="third")
    with pytest.raises(RuntimeError):
        store.update("node0001", {"state": NodeState.FAILED}, kind="failed", message="fourth")
    monkeypatch.undo()

    # neither the new node nor the changed one was written, by this or another connection
    assert store.get("node0002") is None
    first = store.get("node0001")
    assert first is not None
    assert first.state is NodeState.SEEN
    with Store(db, readonly=True) as other:
        assert other.get("node0002") is None
        assert len(other.events()) == len(events_before)
    # and the connection is usable afterwards (no transaction left open)
    store.save(record("node0003"), kind="seen", message="after")
    assert store.get("node0003") is not None


def test_nodes_are_ordered_by_role_cluster_first_seen(store: Store) -> None:
    store.save(record("nc-b-late", cluster="b", first_seen=5.0), kind="seen", message="")
    store.save(record("nc-a-late", cluster="a", first_seen=9.0), kind="seen", message="")
    store.save(record("nc-a-early", cluster="a", first_seen=1.0), kind="seen", message="")
    store.save(record("cc-z", role="cc", cluster="z"), kind="seen", message="")
    assert [n.node_id for n in store.nodes()] == ["cc-z", "nc-a-early", "nc-a-late", "nc-b-late"]


# -- find ----------


@pytest.fixture
def populated(store: Store) -> Store:
    store.save(record("abcd1234", name="node1", ip="10.0.0.1"), kind="seen", message="")
    store.save(record("abce5678", name="node2", ip="10.0.0.2"), kind="seen", message="")
    store.save(record("ab_x9999", name="node3", ip="10.0.0.3"), kind="seen", message="")
    store.save(record("abyx0000", name="node4", ip="10.0.0.4"), kind="seen", message="")
    store.save(record("zz%z0000", name="node5", ip="10.0.0.5"), kind="seen", message="")
    return store


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("abcd1234", "abcd1234"),  # id
        ("abcd", "abcd1234"),  # unique prefix
        ("abce", "abce5678"),
        ("node2", "abce5678"),  # name
        ("10.0.0.1", "abcd1234"),  # address
        ("ab_", "ab_x9999"),  # '_' is not a LIKE wildcard here
        ("zz%", "zz%z0000"),  # nor '%'
    ],
)
def test_find(populated: Store, ref: str, expected: str) -> None:
    assert populated.find(ref).node_id == expected


def test_find_ambiguous_prefix_lists_ids(populated: Store) -> None:
    with pytest.raises(NodeNotFound) as info:
        populated.find("abc")
    message = str(info.value)
    assert "ambiguous" in message
    assert "abcd1234" in message
    assert "abce5678" in message
    assert "ab_x9999" not in message
    assert info.value.exit_code == 66


@pytest.mark.parametrize("ref", ["nothere", "%", "_", "10.0.0.9", "bcd"])
def test_find_unknown(populated: Store, ref: str) -> None:
    with pytest.raises(NodeNotFound, match="no node"):
        populated.find(ref)


# -- forget ----------


def test_forget(store: Store) -> None:
    store.save(record("node0001"), kind="seen", message="")
    assert store.forget("node0001", message="bye") is True
    assert store.get("node0001") is None
    last = store.last_events(1)[0]
    assert (last.node_id, last.kind, last.message) == ("node0001", "forgotten", "bye")
    count = len(store.events())
    assert store.forget("node0001", message="again") is False
    assert len(store.events()) == count  # nothing forgotten, nothing logged


# -- slots: count_holding / registered ----------


def test_count_holding_and_registered(store: Store) -> None:
    store.save(record("cc-foo-1", role="cc", state=NodeState.REGISTERED), kind="r", message="")
    store.save(record("cc-foo-2", role="cc", state=NodeState.REGISTERING), kind="r", message="")
    store.save(record("cc-foo-3", role="cc", state=NodeState.REFUSED), kind="r", message="")
    store.save(
        record("cc-bar-1", role="cc", cluster="bar", state=NodeState.REGISTERED),
        kind="r",
        message="",
    )
    store.save(record("nc-foo-1", state=NodeState.REGISTERED), kind="r", message="")

    def ids(recs: list[NodeRecord]) -> list[str]:
        return sorted(r.node_id for r in recs)

    assert ids(store.count_holding("cc", "foo", exclude="x")) == ["cc-foo-1", "cc-foo-2"]
    assert ids(store.count_holding("cc", "foo", exclude="cc-foo-1")) == ["cc-foo-2"]
    assert ids(store.count_holding("cc", None, exclude="x")) == ["cc-bar-1", "cc-foo-1", "cc-foo-2"]
    assert store.count_holding("cc", "baz", exclude="x") == []
    assert store.count_holding("sc", None, exclude="x") == []
    assert ids(store.registered("cc", "foo")) == ["cc-foo-1"]
    assert ids(store.registered("cc", None)) == ["cc-bar-1", "cc-foo-1"]
    assert ids(store.registered("nc", "foo")) == ["nc-foo-1"]
    assert store.registered("nc", "bar") == []


def test_set_hook_pid_only_while_registering(store: Store) -> None:
    store.save(record("node0001", state=NodeState.REGISTERING), kind="r", message="")
    store.save(record("node0002", state=NodeState.FAILED), kind="f", message="")
    store.set_hook_pid("node0001", 111)
    store.set_hook_pid("node0002", 222)
    first, second = store.get("node0001"), store.get("node0002")
    assert first is not None and second is not None
    assert first.hook_pid == 111
    assert second.hook_pid is None


def test_mark_all_absent_only_touches_mdns_nodes(store: Store) -> None:
    store.save(record("node0001"), kind="s", message="")
    store.save(record("node0002", source="manual"), kind="s", message="")
    store.mark_all_absent()
    first, second = store.get("node0001"), store.get("node0002")
    assert first is not None and second is not None
    assert first.present is False
    assert second.present is True


# -- lockdown ----------


def test_lockdown_default_off(store: Store) -> None:
    assert store.lockdown() == {}
    assert store.is_locked("nc") is False


def test_lockdown_per_role(store: Store) -> None:
    store.set_lockdown("nc", True, reason="maintenance")
    assert store.lockdown() == {"nc": True}
    assert store.is_locked("nc") is True
    assert store.is_locked("cc") is False
    event = store.last_events(1)[0]
    assert event.kind == "lockdown"
    assert event.node_id is None
    assert event.message == "lockdown on for registration of role nc: maintenance"
    assert event.data == {"scope": "nc", "locked": True}


def test_lockdown_global_covers_every_role(store: Store) -> None:
    store.set_lockdown(GLOBAL_SCOPE, True)
    assert store.is_locked("nc") is True
    assert store.is_locked("anything") is True
    assert store.last_events(1)[0].message == "lockdown on for all registration"
    store.set_lockdown(GLOBAL_SCOPE, False)
    assert store.lockdown() == {GLOBAL_SCOPE: False}
    assert store.is_locked("nc") is False


def test_global_off_does_not_unlock_a_locked_role(store: Store) -> None:
    store.set_lockdown("cc", True)
    store.set_lockdown(GLOBAL_SCOPE, False)
    assert store.is_locked("cc") is True
    assert store.is_locked("nc") is False


# -- events ----------


def test_events_after_limit_and_node_filter(store: Store) -> None:
    start = store.events()[-1].seq
    for i in range(5):
        store.add_event("node0001" if i % 2 == 0 else "node0002", "note", f"m{i}", {"i": i})
    store.add_event(None, "global", "g", state="x")
    new = store.events(after=start)
    assert [e.message for e in new] == ["m0", "m1", "m2", "m3", "m4", "g"]
    assert [e.seq for e in new] == sorted(e.seq for e in new)
    assert new[-1].state == "x"
    assert new[-1].node_id is None
    assert [e.message for e in store.events(after=start, limit=2)] == ["m0", "m1"]
    assert [e.message for e in store.events(after=new[1].seq)] == ["m2", "m3", "m4", "g"]
    assert [e.message for e in store.events(node_id="node0002")] == ["m1", "m3"]
    assert store.events(after=new[-1].seq) == []


def test_last_events_are_the_latest_in_chronological_order(store: Store) -> None:
    for i in range(6):
        store.add_event("node0001" if i < 4 else "node0002", "note", f"m{i}")
    assert [e.message for e in store.last_events(3)] == ["m3", "m4", "m5"]
    assert [e.message for e in store.last_events(2, node_id="node0001")] == ["m2", "m3"]
    assert store.last_events(0) == []


def test_event_data_that_is_not_json_is_kept_raw(store: Store, db: Path) -> None:
    store.add_event("node0001", "note", "m")
    seq = store.last_events(1)[0].seq
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET data = 'not json' WHERE seq = ?", (seq,))
    assert store.last_events(1)[0].data == {"raw": "not json"}


# -- change detection ----------


def test_data_version_changes_when_another_connection_commits(store: Store, db: Path) -> None:
    before = store.data_version()
    assert store.data_version() == before  # stable while nothing happens
    with Store(db) as other:
        other.save(record("node0001"), kind="seen", message="from the CLI")
    after = store.data_version()
    assert after != before
    assert store.get("node0001") is not None
    assert store.data_version() == after


# -- known bugs ----------


def test_unusable_state_dir_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StateError):
        Store(blocker / "autoreg.db")


def test_write_to_a_full_database_is_a_state_error(store: Store) -> None:
    # fault injection: cap this connection's database size at its current size
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StateError, match="full"):
        store.save(record("node0001", reason="x" * 100_000), kind="seen", message="big")


def test_write_through_a_readonly_store_is_a_state_error(store: Store, db: Path) -> None:
    with Store(db, readonly=True) as ro, pytest.raises(StateError):
        ro.save(record("node0001"), kind="seen", message="x")
