"""Whatever is thrown at the HTTPS endpoint, the daemon keeps serving: bytes that are not
TLS, TLS that is not HTTP, oversized headers, half-open and stalled connections, floods
of connections from one source.  Real sockets on loopback (127.0.0.2 and .3 play the
attackers, 127.0.0.1 the node), the in-process daemon behind the endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registration._tls import api_identity_init
from registration._trust import create_token
from registration.controller import _api_guard
from registration.node import RegistrarClient
from registration.protocol import encode_node
from registration.state import NodeState, SqliteStore
from support.harness import Harness, announcement, until

LOOSE = ssl.create_default_context()
LOOSE.check_hostname = False
LOOSE.verify_mode = ssl.CERT_NONE


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_api_guard, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(_api_guard, "CONNECTION_LIFETIME", 1.0)
    monkeypatch.setattr(_api_guard, "CLOSE_GRACE", 0.5)


@contextlib.asynccontextmanager
async def endpoint(tmp_path: Path) -> AsyncIterator[tuple[Harness, str, int, str]]:
    identity, _ = api_identity_init(tmp_path / "keys")
    async with Harness(tmp_path, trust="token", extra="listen = 127.0.0.1:0\n") as h:
        url = json.loads((h.config.state_dir / "daemon.json").read_text())["api"]
        yield h, url, int(url.rsplit(":", 1)[1]), identity.fingerprint


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Does the server end the connection within ``timeout`` (EOF or reset)?"""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


async def still_serving(url: str, pin: str) -> None:
    async with RegistrarClient(url, pin) as client:
        assert (await client.describe())["role"] == "clc"


async def test_garbage_before_and_after_tls_costs_nothing(tmp_path: Path) -> None:
    async with endpoint(tmp_path) as (_, url, port, pin):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.2", 0))  # fmt: skip
        writer.write(b"\x00\xff GET / HTTP/1.1\r\n\r\n" * 50)
        assert await closed_by_server(reader, 5)
        writer.close()
        for junk in (b"\x16\x03\x01" + b"\xff" * 300, b"NOT HTTP AT ALL\r\n\r\n",
                     b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
                     b"GET / HTTP/1.1\r\nX: " + b"b" * 10_000 + b"\r\n\r\n"):  # fmt: skip
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=LOOSE, local_addr=("127.0.0.2", 0)
            )
            writer.write(junk)
            head = await asyncio.wait_for(reader.read(200), 5)
            assert head == b"" or head.split(b" ")[1].startswith(b"4"), head
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        await still_serving(url, pin)


async def test_stalled_connections_are_cut_and_one_source_cannot_take_them_all(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as (_, url, port, pin):
        # a TCP connection that never starts TLS: cut after the handshake timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.2", 0))  # fmt: skip
        assert await closed_by_server(reader, 3)
        writer.close()
        # slowloris: as many half-sent requests as one source may hold ...
        held = []
        for _ in range(_api_guard.MAX_PER_SOURCE):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=LOOSE,
                                                 local_addr=("127.0.0.2", 0))  # fmt: skip
            w.write(b"POST /v1/announce HTTP/1.1\r\nHost: x\r\nContent-Len")
            held.append((r, w))
        # ... one more from that source is dropped before TLS, others are served meanwhile
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=LOOSE,
                                                 local_addr=("127.0.0.2", 0))  # fmt: skip
            w.write(b"GET /v1/registrar HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            await r.readexactly(1)
        await still_serving(url, pin)
        # the held connections die with their lifetime (closed, then cut)
        for r, w in held:
            assert await closed_by_server(r, 5)
            w.close()


async def test_a_flood_of_connections_from_one_source_leaves_the_others_served(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as (h, url, port, pin):

        async def knock() -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                _, w = await asyncio.open_connection("127.0.0.1", port,
                                                     local_addr=("127.0.0.3", 0))  # fmt: skip
                w.close()

        started = time.monotonic()
        await asyncio.gather(*(knock() for _ in range(500)))
        await still_serving(url, pin)
        assert time.monotonic() - started < 20
        refused = h.daemon._api.metrics.refused  # type: ignore[union-attr]
        assert refused["too-many-from-source"] + refused["connection-rate"] > 100, refused

        # and registration over the endpoint still works after all of this
        store = await SqliteStore.open(h.config.db_path, origin="cli:test:1")
        joined, _ = await create_token(h.config, store, roles=["walrus"])
        await store.close()
        await until(lambda: joined.token_id in h.daemon.reconciler.index.tokens, "token")
        ann = announcement("walrus01", "walrus")
        async with RegistrarClient(url, pin) as client:
            await client.announce(encode_node(ann, token=joined, now=time.time()), ann.port)
        await h.state("walrus01", NodeState.REGISTERED)
