"""The HTTPS endpoint in-process, on loopback: signed posts go the way of mDNS
announcements, everything else is a 4xx with a JSON error and writes nothing.

The daemon is the in-process one (support.harness: in-memory mDNS, scripted
registrations); the endpoint, TLS and the client are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registration._exceptions import RegistrarError
from registration._tls import api_identity_init, fingerprint_digest
from registration._trust import create_token, revoke_token
from registration.node import RegistrarClient
from registration.protocol import JoinToken, encode_announce_body, encode_node
from registration.state import NodeState, Source
from support.harness import Harness, announcement, until

S = NodeState


class Endpoint:
    def __init__(self, h: Harness, url: str, pin: str) -> None:
        self.h, self.url, self.pin = h, url, pin

    def client(self) -> RegistrarClient:
        return RegistrarClient(self.url, self.pin)

    def session(self) -> aiohttp.ClientSession:
        fingerprint = aiohttp.Fingerprint(fingerprint_digest(self.pin))
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=fingerprint))

    async def token(self, **scope: Any) -> JoinToken:
        from registration.state import SqliteStore

        store = await SqliteStore.open(self.h.config.db_path, origin="cli:test:1")
        try:
            joined, _ = await create_token(self.h.config, store, **scope)
        finally:
            await store.close()
        await until(lambda: joined.token_id in self.h.daemon.reconciler.index.tokens, "token")
        return joined

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        async with self.session() as s, s.request(method, self.url + path, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text.startswith("{") else {"text": text})


@contextlib.asynccontextmanager
async def endpoint(tmp_path: Path, *, rate: float = 1000.0) -> AsyncIterator[Endpoint]:
    identity, _ = api_identity_init(tmp_path / "keys")
    extra = f"listen = 127.0.0.1:0\nlisten_rate = {rate}\n"
    async with Harness(tmp_path, trust="token", extra=extra) as h:
        status = json.loads((h.config.state_dir / "daemon.json").read_text())
        assert status["api"].startswith("https://127.0.0.1:")
        yield Endpoint(h, status["api"], identity.fingerprint)


def signed(ann: Any, token: JoinToken, *, now: float | None = None) -> dict[str, str]:
    return encode_node(ann, token=token, now=time.time() if now is None else now)


async def test_a_signed_post_registers_the_node_as_an_mdns_announcement_would(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as ep, ep.client() as client:
        token = await ep.token(roles=["walrus"])
        ann = announcement("walrus01", "walrus")
        reply = await client.announce(signed(ann, token), ann.port)
        assert (reply["accepted"], reply["lease"]) == (True, 180.0)
        rec = await ep.h.state("walrus01", S.REGISTERED)
        assert (rec.source, rec.auth, rec.granted) == (
            Source.UNICAST,
            "signed",
            f"token:{token.token_id}",
        )
        assert ep.h.script.calls == ["walrus01"]
        view = await client.node("walrus01", ann.fingerprint)
        assert view is not None and (view["state"], view["registered"]) == ("registered", True)
        # only for the host key it announced: nobody lists nodes by guessing ids
        assert await client.node("walrus01", "SHA256:" + "B" * 43) is None
        me = await client.describe()
        assert (me["role"], me["registers"], me["api"]) == ("clc", ["walrus", "cc", "sc"], "v1")
        assert abs(me["time"] - ep.h.clock.time()) < 1
        metrics = ep.h.daemon._api.metrics  # type: ignore[union-attr]
        await until(lambda: metrics.decisions["registered"], "the registration counted")
        text = await client.metrics()
        assert 'autoreg_nodes{state="registered",role="walrus"} 1' in text
        assert 'autoreg_decisions_total{outcome="registered"} 1' in text
        assert 'autoreg_ssh_outcomes_total{path="direct",outcome="verified"} 1' in text
        assert 'autoreg_api_requests_total{endpoint="announce",status="202"} 1' in text
        assert "autoreg_pending_nodes 0" in text


async def test_mdns_and_https_at_once_are_one_node_registered_once(tmp_path: Path) -> None:
    async with endpoint(tmp_path) as ep, ep.client() as client:
        token = await ep.token(roles=["walrus"])
        ann = announcement("walrus01", "walrus")
        txt = {k.encode(): v.encode() for k, v in signed(ann, token).items()}
        ep.h.network.raw("walrus-walrus01._autoreg._tcp.local.", ann.port, txt)
        await client.announce(signed(ann, token), ann.port)
        await ep.h.state("walrus01", S.REGISTERED)
        await client.announce(signed(ann, token), ann.port)
        await ep.h.settle()
        assert [r.node_id for r in await ep.h.daemon.store.nodes()] == ["walrus01"]
        assert ep.h.script.calls == ["walrus01"]


async def test_a_token_that_does_not_admit_the_node_leaves_it_pending_with_the_reason(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as ep, ep.client() as client:
        token = await ep.token(roles=["cc"], cluster="foo")
        ann = announcement("walrus01", "walrus")
        await client.announce(signed(ann, token), ann.port)
        rec = await ep.h.state("walrus01", S.PENDING)
        assert "is for cc of cluster foo, not walrus" in rec.reason
        view = await client.node("walrus01", ann.fingerprint)
        assert view is not None and view["state"] == "pending"


async def test_every_refusal_is_a_4xx_with_a_json_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as ep:
        token = await ep.token(roles=["walrus"])
        revoked = await ep.token(roles=["walrus"])
        from registration.state import SqliteStore

        admin = await SqliteStore.open(ep.h.config.db_path, origin="cli:test:2")
        await revoke_token(admin, revoked.token_id)
        await admin.close()
        await until(lambda: ep.h.daemon.reconciler.index.tokens[revoked.token_id].revoked,
                    "revoked")  # fmt: skip
        ann = announcement("walrus01", "walrus")
        good = signed(ann, token)
        json_type = {"Content-Type": "application/json"}

        def post(txt: dict[str, str], port: int = 22) -> dict[str, Any]:
            return {"data": encode_announce_body(txt, port), "headers": json_type}

        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/v1/announce", post(encode_node(ann)), 401, "unsigned"),
            ("POST", "/v1/announce", post({**good, "ip": "198.18.0.99"}), 403, "bad-signature"),
            ("POST", "/v1/announce", post(signed(ann, token, now=time.time() - 3600)), 403,
             "bad-signature"),
            ("POST", "/v1/announce", post(signed(ann, JoinToken("zzzzzz9", "s" * 24))), 403,
             "unknown-token"),
            ("POST", "/v1/announce", post(signed(ann, revoked)), 403, "token-refused"),
            ("POST", "/v1/announce", post({**good, "v": "2"}), 400, "unsupported-version"),
            ("POST", "/v1/announce", post({**good, "fp": "nope"}), 400, "bad-announcement"),
            ("POST", "/v1/announce", {"data": b"{nope", "headers": json_type}, 400, "bad-json"),
            ("POST", "/v1/announce", {"data": b'{"port": 22, "port": 22, "txt": {}}',
                                      "headers": json_type}, 400, "bad-json"),
            ("POST", "/v1/announce", {"data": b"{}", "headers": {"Content-Type": "text/plain"}},
             415, "bad-content-type"),
            ("POST", "/v1/announce", {"data": b"x" * 100_000, "headers": json_type}, 413,
             "too-large"),
            ("POST", "/v1/announce", {"data": _chunks(100_000), "headers": json_type}, 413,
             "too-large"),
            ("POST", "/v2/announce", post(good), 404, "unknown-api-version"),
            ("GET", "/v1/announce", {}, 405, "method-not-allowed"),
            ("GET", "/nope", {}, 404, "not-found"),
            ("GET", "/v1/nodes/x", {}, 400, "bad-request"),
            ("GET", "/v1/nodes/walrus01?fp=SHA256:" + "A" * 43, {}, 404, "unknown-node"),
            ("POST", "/v1/announce",
             post(signed(announcement("nc000001", "nc", "foo"), token)), 403, "not-mine"),
            ("POST", "/v1/announce",
             post(signed(announcement("walrus02", "walrus", ip="127.0.0.1"), token)), 422,
             "address-refused"),
        ]  # fmt: skip
        for method, path, kw, status, code in cases:
            got, body = await ep.raw(method, path, **kw)
            assert (got, body.get("error")) == (status, code), (path, kw.get("data"), body)
            assert isinstance(body.get("message"), str) and body["message"]
        await ep.h.settle()
        assert await ep.h.daemon.store.nodes() == []  # no unauthenticated write
        assert not [e for e in await ep.h.daemon.store.last_events(100) if e.node_id]


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 1000):
        yield b"x" * 1000


async def test_a_source_beyond_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with endpoint(tmp_path, rate=2) as ep, ep.session() as s:
        statuses = []
        for _ in range(10):
            async with s.get(ep.url + "/v1/registrar") as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
        assert statuses[:6] == [200] * 6 and statuses[-1] == 429
        assert retry is not None and int(retry) >= 1


async def test_a_node_that_pins_another_certificate_sends_nothing(tmp_path: Path) -> None:
    async with endpoint(tmp_path) as ep:
        other, _ = api_identity_init(tmp_path / "other")
        async with RegistrarClient(ep.url, other.fingerprint) as client:
            with pytest.raises(RegistrarError) as caught:
                await client.describe()
        assert caught.value.code == "pin-mismatch"
        assert f"presented certificate {ep.pin}, not the pinned {other.fingerprint}" in str(
            caught.value
        )
        assert not ep.h.daemon._api.metrics.requests  # type: ignore[union-attr]


async def test_no_registrar_answering_is_said_in_words(tmp_path: Path) -> None:
    identity, _ = api_identity_init(tmp_path / "keys")
    async with RegistrarClient("https://127.0.0.1:1", identity.fingerprint) as client:
        with pytest.raises(RegistrarError, match=r"no registrar answering at https://127.0.0.1:1"):
            await client.describe()


async def test_a_registered_node_that_still_posts_ready_gets_its_receipt_again(
    tmp_path: Path,
) -> None:
    async with endpoint(tmp_path) as ep, ep.client() as client:
        token = await ep.token(roles=["walrus"])
        ann = announcement("walrus01", "walrus")
        await client.announce(signed(ann, token), ann.port)
        await ep.h.state("walrus01", S.REGISTERED)
        ep.h.clock.advance(10)
        await client.announce(signed(ann, token), ann.port)  # the receipt never arrived
        await ep.h.settle()
        ep.h.clock.advance(25)
        await until(lambda: ep.h.script.receipts == ["walrus01"], "the receipt sent again")


async def test_a_daemon_that_cannot_serve_its_endpoint_says_why(tmp_path: Path) -> None:
    from registration._exceptions import EndpointError, KeyMaterialError

    for name in "ab":
        (tmp_path / name).mkdir()
    with pytest.raises(KeyMaterialError, match="autoreg keys init"):
        async with Harness(tmp_path / "a", trust="token", extra="listen = 127.0.0.1:0\n"):
            pass
    api_identity_init(tmp_path / "b" / "keys")
    async with endpoint(tmp_path / "c") as ep:
        port = ep.url.rsplit(":", 1)[1]
        with pytest.raises(EndpointError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with Harness(tmp_path / "b", extra=f"listen = 127.0.0.1:{port}\n"):
                pass
