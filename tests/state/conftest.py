"""The state store fixtures: every backend of the contract (``test_contract*.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration.state import StateStore
from support.stores import Backend


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield Backend(tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    opened = asyncio.run(backend.open())
    yield opened
    asyncio.run(opened.close())


