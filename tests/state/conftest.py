"""The state store fixtures: every backend of the contract (``test_contract*.py``).

``backend`` is parametrised over sqlite (a plain unit test) and etcd (``netns``: a
real three-member TLS cluster in namespaces, shared by the session's tests, each
test on a prefix of its own, the test's thread inside the cluster's client host).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration.state import StateStore
from support.etcdlab import EtcdCluster
from support.netlab import Lab
from support.netns import inside
from support.stores import Backend, EtcdBackend, EtcdLab

#: 198.18.252.0/24: the contract tests' etcd cluster.
LAB_INDEX = 252
#: Progress notifications keep idle watches talking (docs/admin.md, "Several registrars").
ETCD_ARGS = ("--experimental-watch-progress-notify-interval=1s",)


@pytest.fixture(scope="session")
def etcd_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdLab]:
    workdir = tmp_path_factory.mktemp("etcd-contract")
    with Lab(workdir / "lab", index=LAB_INDEX) as lab, EtcdCluster(lab, extra_args=ETCD_ARGS) as cl:
        yield EtcdLab(cl, cl.add_client("contract"))


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.netns)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(tmp_path)
        return
    lab: EtcdLab = request.getfixturevalue("etcd_lab")
    with inside(lab.client):
        yield EtcdBackend(lab, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    opened = asyncio.run(backend.open())
    yield opened
    asyncio.run(opened.close())
