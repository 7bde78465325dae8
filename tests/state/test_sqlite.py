"""What the sqlite backend adds to the contract: files, modes, migrations, errors, the lock."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration._exceptions import AlreadyRunning, StateError
from registration.protocol import Announcement
from registration.state import SCHEMA_VERSION, Source, SqliteStore
from registration.state import _sqlite as sqlite_module
from support.sync_store import SyncStore

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


def ann(node_id: str) -> Announcement:
    return Announcement(
        node_id=node_id, role="nc", cluster="foo", ip="198.18.0.5", port=22, fingerprint=FP
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "autoreg.db"


@pytest.fixture
def store(db: Path) -> Iterator[SyncStore]:
    with SyncStore(db) as s:
        yield s


def test_new_store_has_current_schema_wal_and_private_mode(store: SyncStore, db: Path) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"nodes", "lockdown", "events", "presence", "tunnels"} <= tables
    assert len([e for e in store.events() if e.kind == "schema"]) == SCHEMA_VERSION
    assert oct(db.stat().st_mode & 0o777) == oct(0o640)
    assert oct(db.parent.stat().st_mode & 0o777) == oct(0o750)


def test_reopening_does_not_migrate_again(db: Path) -> None:
    with SyncStore(db) as first:
        first.ingest(ann("node0001"), source=Source.MDNS, instance="a")
    with SyncStore(db) as second:
        assert [e.kind for e in second.events()].count("schema") == SCHEMA_VERSION
        assert second.get("node0001") is not None


def test_newer_schema_refused(db: Path) -> None:
    SyncStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for readonly in (False, True):
        with pytest.raises(StateError, match="newer than this autoreg"):
            SyncStore(db, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True])
def test_corrupt_file_is_a_state_error(db: Path, readonly: bool) -> None:
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 2\x00" + os.urandom(8192))
    with pytest.raises(StateError) as info:
        SyncStore(db, readonly=readonly)
    assert str(db) in str(info.value)


def test_readonly_open_of_missing_db_creates_nothing(db: Path) -> None:
    with pytest.raises(StateError, match="no state database"):
        SyncStore(db, readonly=True)
    assert not db.parent.exists()


def test_unusable_state_dir_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StateError):
        SyncStore(blocker / "autoreg.db")


def test_write_through_a_readonly_store_is_a_state_error(store: SyncStore, db: Path) -> None:
    with SyncStore(db, readonly=True) as ro, pytest.raises(StateError):
        ro.ingest(ann("node0001"), source=Source.MDNS, instance="a")


def test_write_to_a_full_database_is_a_state_error(store: SyncStore) -> None:
    conn = store.store._db._conn  # fault injection: cap the database at its size now
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StateError, match="full"):
        for i in range(200):
            store.add_event("node0001", "note", "x" * 10_000, {"i": i})


def test_a_node_and_its_event_land_together_or_not_at_all(
    store: SyncStore, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ingest(ann("node0001"), source=Source.MDNS, instance="a")
    count = len(store.events())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sqlite_module._Database, "_event", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.ingest(ann("node0002"), source=Source.MDNS, instance="b")
    monkeypatch.undo()
    assert store.get("node0002") is None
    with SyncStore(db, readonly=True) as other:
        assert other.get("node0002") is None
        assert len(other.events()) == count
    store.ingest(ann("node0003"), source=Source.MDNS, instance="c")  # no transaction left open
    assert store.get("node0003") is not None


def test_event_data_that_is_not_json_is_kept_raw(store: SyncStore, db: Path) -> None:
    store.add_event("node0001", "note", "m")
    seq = store.last_events(1)[0].seq
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET data = 'not json' WHERE seq = ?", (seq,))
    assert store.last_events(1)[0].data == {"raw": "not json"}


# -- one daemon per store ----------


def test_a_second_registrar_on_the_same_store_is_refused(db: Path) -> None:
    async def scenario() -> None:
        first = await SqliteStore.open(db, origin="one")
        second = await SqliteStore.open(db, origin="two")
        try:
            await first.lock_registrar("clc:a:1")
            with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}") as info:
                await second.lock_registrar("clc:a:2")
            assert info.value.exit_code == 75
        finally:
            await first.close()
        await second.lock_registrar("clc:a:2")  # the first one closed: free again
        await second.close()

    asyncio.run(scenario())


def test_the_lock_dies_with_its_holder(db: Path) -> None:
    SyncStore(db).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys, time\n"
            "from pathlib import Path\n"
            "from registration.state import SqliteStore\n"
            "async def main():\n"
            f"    s = await SqliteStore.open(Path({str(db)!r}), origin='x')\n"
            "    await s.lock_registrar('clc:x:1')\n"
            "    print('locked', flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

        async def attempt() -> None:
            store = await SqliteStore.open(db, origin="y")
            try:
                await store.lock_registrar("clc:y:1")
            finally:
                await store.close()

        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            asyncio.run(attempt())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        asyncio.run(attempt())  # the kernel released it with the process
    finally:
        holder.kill()
        holder.wait(timeout=10)
