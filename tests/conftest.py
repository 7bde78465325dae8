"""Suite-wide fixtures and leak guards.

Every test must leave no network namespace and no process behind; the guard
checks after each test and fails the test that leaked (and cleans up).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import netlab
from support.autoreg_lab import AutoregLab
from support.prerequisites import unavailable
from support.routed import RoutedLabs

_lab_index = iter(range(10, 250))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests need root for namespaces; in CI they must run, never skip."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("CI=true but not root: the netns integration tests cannot run")
    skip = pytest.mark.skip(reason="needs root for network namespaces (run `make test`)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``prerequisite(ok, reason=...)`` markers: skip outside CI, fail under CI=true."""
    for mark in item.iter_markers("prerequisite"):
        if not mark.args[0]:
            unavailable(mark.kwargs["reason"])


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop each (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    yield
    leaked_ns = [
        ns
        for ns in netlab.leaked_namespaces()
        if not any(ns.startswith(lab.tag) for lab in netlab.open_labs())
    ]
    leaked_pids = netlab.leaked_processes() if not netlab.open_labs() else []
    assert not leaked_ns, f"test leaked network namespaces: {leaked_ns}"
    assert not leaked_pids, f"test leaked processes: {leaked_pids}"


@pytest.fixture
def alab(tmp_path: Path) -> Iterator[AutoregLab]:
    """A fresh isolated network (its own /24 in 198.18.0.0/15) for autoreg stations."""
    with netlab.Lab(tmp_path / "lab", index=next(_lab_index)) as lab:
        yield AutoregLab(lab)


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[RoutedLabs]:
    """Three isolated networks (a /24 each), for a test to join with routers."""
    with RoutedLabs(tmp_path / "nets", [next(_lab_index) for _ in range(3)]) as nets:
        yield nets
