"""Store backends for the contract tests: each opens stores on one shared state.

``Backend`` is sqlite (a database file in the test's directory); ``EtcdBackend`` is
etcd, a prefix of its own on the session's etcd cluster (:class:`EtcdLab`: three
members with TLS in namespaces).  Several handles of one backend share one state.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from registration._config import EtcdConfig
from registration.state import EtcdStore, SqliteStore, StateStore

from .etcdlab import EtcdCluster
from .netlab import Host

__all__ = ["Backend", "EtcdBackend", "EtcdLab", "etcd_settings"]


class Backend:
    """Opens stores of one backend on one shared state (a directory, a cluster…)."""

    name = "sqlite"
    shared = False

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "state" / "autoreg.db"
        self.tmp_path = tmp_path

    async def open(
        self, *, origin: str = "test", readonly: bool = False, lock_dir: Path | None = None
    ) -> StateStore:
        # sqlite: the lock is the database's own directory's, whatever lock_dir says
        return await SqliteStore.open(self.db, origin=origin, readonly=readonly)


class EtcdLab:
    """An etcd cluster shared by many tests, and the lab host their clients run in."""

    def __init__(self, cluster: EtcdCluster, client: Host) -> None:
        self.cluster = cluster
        self.client = client


def etcd_settings(cluster: EtcdCluster, prefix: str, **changes: object) -> EtcdConfig:
    tls = cluster.client_tls
    base: dict[str, object] = {
        "endpoints": tuple(cluster.endpoints),
        "ca": tls.ca,
        "cert": tls.cert,
        "key": tls.key,
        "prefix": prefix,
        "timeout": 2.0,
        "lease_ttl": 10.0,
    }
    base.update(changes)
    return EtcdConfig(**base)  # type: ignore[arg-type]


class EtcdBackend(Backend):
    """A fresh prefix on the session's cluster (open handles only inside its client host)."""

    name = "etcd"
    shared = True

    def __init__(self, lab: EtcdLab, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.lab = lab
        self.settings = etcd_settings(lab.cluster, f"/test-{secrets.token_hex(4)}/")

    async def open(
        self, *, origin: str = "test", readonly: bool = False, lock_dir: Path | None = None
    ) -> StateStore:
        return await EtcdStore.open(
            self.settings, origin=origin, readonly=readonly, lock_dir=lock_dir or self.tmp_path
        )
