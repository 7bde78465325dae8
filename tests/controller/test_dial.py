"""Dialling a node: a connected socket, or one line saying why not (loopback only)."""

from __future__ import annotations

import asyncio
import resource
import socket

import pytest

from registration._exceptions import NodeUnreachable
from registration.controller._dial import FD_RESERVE, Dialed, dial, probe_capacity


async def test_a_listening_port_gives_a_blocking_socket_without_nagle() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await dial("127.0.0.1", port, timeout=5)
        try:
            assert sock.getblocking()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            sock.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_closed_port_says_connection_refused() -> None:
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    with pytest.raises(NodeUnreachable, match=rf"127\.0\.0\.1:{port}: connection refused$"):
        await dial("127.0.0.1", port, timeout=5)


async def test_not_an_address_is_refused_before_any_socket() -> None:
    with pytest.raises(NodeUnreachable, match="not an address"):
        await dial("node.example", 22, timeout=5)


def test_a_dialled_socket_is_handed_over_once_and_closed_by_whoever_holds_it() -> None:
    ours, theirs = socket.socketpair()
    dialed = Dialed(sock=ours)
    assert dialed.take() is ours and dialed.take() is None
    dialed.close()  # nothing left to close
    assert ours.fileno() != -1
    ours.close()
    theirs.close()


def test_the_probe_capacity_stays_within_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert probe_capacity(10) == 10
    if soft != resource.RLIM_INFINITY:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)  # raised to the hard limit
        assert probe_capacity(10**9) == soft - FD_RESERVE
