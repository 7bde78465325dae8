"""The intake keeps what the store could not take: a batch it refused is tried again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registration._exceptions import StateError
from registration.state import NodeState as S
from support.harness import Harness, announcement, until


async def test_a_batch_the_store_refused_is_stored_once_it_can(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        store = h.daemon.store
        real = store.ingest_many
        refused: list[int] = []

        async def unavailable_once(items: Any) -> Any:
            if not refused:
                refused.append(len(items))
                raise StateError("etcd: no member answered announcements (no quorum)")
            return await real(items)

        store.ingest_many = unavailable_once  # type: ignore[method-assign]
        for i in range(5):
            ip = f"198.18.1.{i + 2}"
            h.network.announce(announcement(f"cc{i:06d}", "cc", f"c{i:04d}", ip=ip))
        await until(lambda: len(h.daemon.reconciler.index) == 5, "all five stored", timeout=10)
        assert refused and refused[0] >= 1
        for i in range(5):
            await h.state(f"cc{i:06d}", S.REGISTERED)
