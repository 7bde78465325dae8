"""The registrar's HTTPS endpoint (``[controller] listen``): the spec's registration service.

aiohttp serves it; TLS with the registrar's own key and self-signed certificate,
which nodes pin (``registration._tls``).  Routes (docs/protocol.md, "HTTPS
registration API"):

- ``POST /v1/announce``: a node's signed record, the TXT keys as JSON.  It goes
  through the codec (``decode_node``), the signature check against the tokens the
  registrar knows, and then the daemon's one way in, ``Intake.offer``, with source
  ``unicast`` and a lease (``LEASE``) in place of mDNS presence: the same limits,
  trust policy and decisions as a browsed announcement.  Nothing unsigned, and
  nothing signed with an unknown, revoked or expired token, is ever stored;
- ``GET /v1/nodes/ID?fp=SHA256:…``: that node's state and the reason for it (only
  for the host key it announced: no listing of nodes);
- ``GET /v1/registrar``: who this registrar is ("I am the CLC");
- ``GET /metrics``: Prometheus text (``_metrics``).

Every refusal is a 4xx with a JSON body ``{"error": CODE, "message": …}``; limits
per source (``_api_guard``) keep the daemon serving whatever is thrown at it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from .._clock import Clock
from .._config import Config
from .._endpoints import format_listen
from .._exceptions import AnnouncementError, AutoregError, EndpointError
from .._tls import api_identity, server_context
from .._version import __version__
from ..node import NodeIdentity
from ..protocol import (
    ANNOUNCE_PATH,
    API_VERSION,
    MAX_BODY,
    METRICS_PATH,
    NODES_PATH,
    REGISTRAR_PATH,
    check_fingerprint,
    check_node_id,
    decode_announce_body,
    decode_node,
    instance_name,
    verify,
)
from ..state import NodeRecord, NodeState, Source, StateStore
from ._api_guard import ConnectionGate, RateLimiter
from ._intake import Intake
from ._metrics import CONTENT_TYPE, Metrics
from ._reconciler import Reconciler

if TYPE_CHECKING:  # aiohttp is imported when the endpoint starts: the CLI never pays for it
    from aiohttp import web

__all__ = ["LEASE", "ApiServer", "start_api"]

log = logging.getLogger(__name__)

#: Seconds a posted announcement keeps its node present (nodes post again well before).
LEASE: Final = 180.0
#: Seconds between log lines summing up refused requests.
REPORT_INTERVAL: Final = 60.0
#: What a node is told to wait when the registrar cannot take its announcement now.
BUSY_RETRY: Final = 30
_VERSIONED: Final = re.compile(r"/v[0-9]+(/|$)")


class _Quiet(logging.Filter):
    """aiohttp's own log of requests it could not parse (every malformed request from
    the network, with a traceback in 3.8): one debug line each, never an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        log.debug("HTTPS endpoint: %s", str(error or record.getMessage())[:200])
        return False


#: The logger aiohttp's protocol handler gets (hostile input must not flood the log).
_HTTP_LOG: Final = logging.getLogger(__name__ + ".http")
_HTTP_LOG.addFilter(_Quiet())


class Refusal(AutoregError):
    """A request refused: the HTTP status, the API's error code, a message for people
    (raised by a handler, answered by the middleware; never leaves this module)."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None,
        retry_after: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.retry_after = field, retry_after

    def response(self) -> web.Response:
        from aiohttp import web

        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return web.json_response(body, status=self.status, headers=headers)


class ApiServer:
    """The endpoint's lifecycle (``start``/``close``) and its handlers."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        intake: Intake,
        reconciler: Reconciler,
        clock: Clock,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        assert config.controller.listen is not None
        self._config = config
        self._store = store
        self._intake = intake
        self._recon = reconciler
        self._clock = clock
        self._status = status
        self._host, self._port = config.controller.listen
        self._limiter = RateLimiter(config.controller.listen_rate)
        self.metrics = Metrics(lambda: reconciler.index)
        self._runner: web.AppRunner | None = None
        self._gate: ConnectionGate | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._follower: asyncio.Task[None] | None = None
        self._refusals: collections.Counter[str] = collections.Counter()
        self._last_source: dict[str, str] = {}
        self._reported = -REPORT_INTERVAL
        self._me: dict[str, Any] = {}
        self.fingerprint = ""
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; KeyMaterialError (no key pair) or EndpointError (cannot bind)."""
        from aiohttp import web

        identity = api_identity(self._config.keys_dir)
        context = server_context(identity)
        self.fingerprint = identity.fingerprint
        me = NodeIdentity.from_config(self._config, need_host_key=False)
        self._me = {"id": me.node_id, "name": me.name, "ip": me.address}
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware()])
        app.router.add_post(ANNOUNCE_PATH, self._announce)
        app.router.add_get(NODES_PATH + "/{node_id}", self._node)
        app.router.add_get(REGISTRAR_PATH, self._registrar)
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_get(f"/{API_VERSION}{METRICS_PATH}", self._metrics)
        runner = self._runner = web.AppRunner(
            app,
            access_log=None,
            logger=_HTTP_LOG,
            keepalive_timeout=5.0,
            max_line_size=4096,
            max_field_size=4096,
            max_headers=64,
        )
        await runner.setup()
        assert runner.server is not None
        gate = self._gate = ConnectionGate(
            context,
            runner.server,
            rate=2 * self._config.controller.listen_rate,
            on_refused=self._connection_refused,
        )
        loop = asyncio.get_running_loop()
        where = format_listen(self._host, self._port)
        try:
            self._listener = await loop.create_server(
                gate.protocol, self._host, self._port, backlog=128, reuse_address=True
            )
        except OSError as exc:
            await self.close()
            raise EndpointError(
                f"cannot listen on {where} ([controller] listen): {exc.strerror or exc}"
            ) from exc
        host, port = self._listener.sockets[0].getsockname()[:2]
        self.url = "https://" + format_listen(host, port)
        last = await self._store.last_events(1)
        self._follower = asyncio.ensure_future(
            self.metrics.follow(self._store, max((e.seq for e in last), default=0))
        )
        log.info("HTTPS registration endpoint at %s (certificate %s)", self.url, self.fingerprint)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._gate is not None:
            await self._gate.close()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        if self._runner is not None:
            if self._runner.server is not None:
                await self._runner.server.shutdown(1.0)
            await self._runner.cleanup()
        self._runner = self._gate = self._listener = self._follower = None

    # -- the way through -------------------------------------------------------------

    def _middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            source = request.remote or "?"
            refusal: Refusal | None = None
            try:
                wait = self._limiter.take(source)
                if wait > 0:
                    raise Refusal(429, "rate-limited", f"too many requests from {source}: at "
                                  f"most {self._limiter.rate:g}/s", retry_after=wait)  # fmt: skip
                response = await handler(request)
            except Refusal as exc:
                refusal = exc
            except web.HTTPException as exc:
                refusal = _http_error(request, exc)
            except Exception:
                log.exception("HTTPS endpoint: %s %s failed", request.method, request.path)
                refusal = Refusal(500, "internal", "the registrar failed; see its log")
            if refusal is not None:
                response = refusal.response()
                if refusal.code != "unknown-node":  # a node asking before it is stored
                    self._refused(refusal.code, source)
            self.metrics.requests[(_endpoint(request), response.status)] += 1
            return response

        return guard

    def _connection_refused(self, reason: str) -> None:
        self.metrics.refused[reason] += 1

    def _refused(self, code: str, source: str) -> None:
        self._refusals[code] += 1
        self._last_source[code] = source
        now = self._clock.time()
        if now - self._reported < REPORT_INTERVAL:
            return
        self._reported = now
        counts, self._refusals = self._refusals, collections.Counter()
        parts = [f"{n} {c} (last from {self._last_source.get(c, '?')})"
                 for c, n in counts.most_common(8)]  # fmt: skip
        log.warning("HTTPS endpoint refused %d request(s): %s", counts.total(), ", ".join(parts))

    # -- handlers --------------------------------------------------------------------

    async def _announce(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if request.content_length is not None and request.content_length > MAX_BODY:
            raise Refusal(413, "too-large", f"a body of at most {MAX_BODY} bytes")
        if request.content_type != "application/json":
            raise Refusal(415, "bad-content-type", "send Content-Type: application/json")
        body = await request.read()  # HTTPRequestEntityTooLarge beyond client_max_size
        try:
            txt, port = decode_announce_body(body)
        except AnnouncementError as exc:
            code = "bad-json" if exc.field == "json" else "bad-request"
            raise Refusal(400, code, str(exc), field=exc.field) from exc
        try:
            ann = decode_node(txt, port)
        except AnnouncementError as exc:
            unknown = exc.field == "v" and "version" in exc.reason
            raise Refusal(
                400, "unsupported-version" if unknown else "bad-announcement", str(exc),
                field=exc.field,
            ) from exc  # fmt: skip
        self._authenticate(ann)
        stop = self._intake.screen(ann)
        if stop is not None and stop.not_mine:
            raise Refusal(403, "not-mine", f"this registrar does not register it: {stop.not_mine}")
        if stop is not None:
            raise Refusal(422, "address-refused", stop.refused or "address refused", field="ip")
        instance = instance_name(ann.role, ann.node_id)
        if not self._intake.offer(ann, source=Source.UNICAST, instance=instance, lease=LEASE):
            raise Refusal(503, "busy", "the registrar cannot take announcements now; post again "
                          "later", retry_after=BUSY_RETRY)  # fmt: skip
        rec = self._recon.index.get(ann.node_id)
        known = _view(rec) if rec is not None and rec.fingerprint == ann.fingerprint else {}
        reply = {"accepted": True, "node_id": ann.node_id, "lease": LEASE, **known}
        return web.json_response(reply, status=202)

    def _authenticate(self, ann: Any) -> None:
        """Only a record signed with a live token this registrar knows may write anything."""
        claim = ann.signature
        if claim is None:
            raise Refusal(401, "unsigned", "announcements over HTTPS must be signed with a "
                          "join token ([node] token_file, `autoreg token create`)")  # fmt: skip
        token = self._recon.index.token(claim.token_id)
        if token is None:
            raise Refusal(403, "unknown-token", f"token {claim.token_id} is not known here",
                          field="tid")  # fmt: skip
        now = self._clock.time()
        why = verify(claim, token.key, now=now, window=self._config.controller.signature_window)
        if why:
            raise Refusal(403, "bad-signature", f"bad signature: {why}", field="sig")
        if token.revoked is not None or now >= token.expires:
            state = "was revoked" if token.revoked is not None else "expired"
            raise Refusal(403, "token-refused", f"token {token.token_id} {state}", field="tid")

    async def _node(self, request: web.Request) -> web.Response:
        from aiohttp import web

        node_id, fp = request.match_info["node_id"], request.query.get("fp", "")
        try:
            check_node_id(node_id)
            check_fingerprint(fp)
        except AnnouncementError as exc:
            raise Refusal(400, "bad-request", f"{exc} (GET {NODES_PATH}/ID?fp=SHA256:…)",
                          field=exc.field) from exc  # fmt: skip
        rec = self._recon.index.get(node_id)
        if rec is None or fp not in (rec.fingerprint, _contender_fp(rec)):
            raise Refusal(404, "unknown-node", f"no node {node_id} with host key {fp} here "
                          f"(yet): POST {ANNOUNCE_PATH} first")  # fmt: skip
        return web.json_response(_view(rec))

    async def _registrar(self, request: web.Request) -> web.Response:
        from aiohttp import web

        status = self._status()
        role = status.get("role", "")
        return web.json_response({
            "api": API_VERSION, "version": __version__, **self._me,
            "role": role, "cluster": status.get("cluster"),
            "state": status.get("registrar_state"), "window": status.get("window"),
            "trust": status.get("trust"),
            "registers": list(self._config.profile.roles_registered_by(role)),
            "time": self._clock.time(),
        })  # fmt: skip

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        text = self.metrics.render(
            queue=self._intake.queued, connections=self._gate.open_connections if self._gate else 0
        )
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def _view(rec: NodeRecord) -> dict[str, Any]:
    """What a node may learn about itself: its state and the reason for it."""
    return {
        "node_id": rec.node_id, "role": rec.role, "cluster": rec.cluster,
        "state": rec.state.value, "reason": rec.reason,
        "registered": rec.state is NodeState.REGISTERED, "present": rec.present,
        "source": rec.source.value, "updated": rec.updated,
    }  # fmt: skip


def _contender_fp(rec: NodeRecord) -> str | None:
    try:
        other = json.loads(rec.contender) if rec.contender else None
    except ValueError:
        return None
    fp = other.get("fingerprint") if isinstance(other, dict) else None
    return fp if isinstance(fp, str) else None


def _endpoint(request: web.Request) -> str:
    path = request.path
    if path == ANNOUNCE_PATH:
        return "announce"
    if path.startswith(NODES_PATH + "/"):
        return "node"
    if path == REGISTRAR_PATH:
        return "registrar"
    if path in (METRICS_PATH, f"/{API_VERSION}{METRICS_PATH}"):
        return "metrics"
    return "other"


def _http_error(request: web.Request, exc: web.HTTPException) -> Refusal:
    """aiohttp's own refusals (no route, wrong method, body too large) as JSON."""
    status = exc.status
    if status == 413:
        return Refusal(413, "too-large", f"a body of at most {MAX_BODY} bytes")
    if (
        status == 404
        and _VERSIONED.match(request.path)
        and not request.path.startswith(f"/{API_VERSION}/")
    ):
        return Refusal(404, "unknown-api-version", f"this registrar speaks API {API_VERSION} "
                       f"(/{API_VERSION}/…)")  # fmt: skip
    if status == 404:
        return Refusal(404, "not-found", "no such endpoint (see docs/protocol.md)")
    if status == 405:
        return Refusal(405, "method-not-allowed", f"{request.method} is not allowed here")
    return Refusal(status, "bad-request", exc.reason or "bad request")


async def start_api(
    config: Config, store: StateStore, intake: Intake, reconciler: Reconciler, clock: Clock,
    status: Callable[[], dict[str, Any]],
) -> ApiServer | None:  # fmt: skip
    """The endpoint, serving, when ``[controller] listen`` is set; else None."""
    if config.controller.listen is None:
        return None
    server = ApiServer(config, store, intake, reconciler, clock, status)
    try:
        await server.start()
    except AutoregError:
        await server.close()
        raise
    return server
