"""The etcd store's I/O boundary: etcd3gw clients, one per member, and the raw calls.

Everything that talks to etcd goes through :class:`EtcdIO`; nothing else imports
etcd3gw or requests.  Built as docs/../notes say for both etcd3gw 2.0.0 (Debian 12)
and 2.7 (PyPI): ``Etcd3Client(..., api_path="/v3/")`` with our own
``requests.Session`` (a default timeout on every request, the watch stream too;
``trust_env = False``, so ``REQUESTS_CA_BUNDLE`` cannot replace the configured CA
and no proxy applies), one client per member (etcd3gw knows one endpoint only), and
raw gateway JSON for everything (keys are bytes, base64 on the wire).

Errors are mapped here, once, to :class:`~registration._exceptions.StateError`
subclasses that name the endpoint and what was asked: :class:`EtcdUnavailable` when
no member answered (``ambiguous``: a write may still have been applied, or be
applied later: callers re-read before they decide), :class:`LeaseLost`,
:class:`Compacted`.  Every answer is parsed defensively: what comes back from the
network is checked before it is used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

from .._config import EtcdConfig
from .._exceptions import StateError

__all__ = [
    "Compacted",
    "EtcdIO",
    "EtcdUnavailable",
    "LeaseLost",
    "WatchLost",
    "b64",
    "prefix_end",
    "unb64",
]

#: Read timeout of a watch stream, in request timeouts: progress notifications (or
#: events) keep a healthy stream talking; silence this long means a dead member, and
#: the watch moves on (resuming from its revision, so nothing is missed).
WATCH_READ_TIMEOUTS: Final = 5


class EtcdUnavailable(StateError):
    """No member of the etcd cluster answered (each one's reason is in the message).

    ``ambiguous``: the request was a write that may have been applied anyway (etcd
    answers "request timed out" without a quorum, and applies the write once the
    quorum is back), so the caller must re-read before deciding.
    """

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class LeaseLost(StateError):
    """The registrar's etcd lease expired or was revoked: its claims are gone."""


class Compacted(StateError):
    """The revision asked for was compacted away (reload, then resume)."""


class WatchLost(Exception):
    """A watch stream ended; resume from ``next_revision`` (reload first if ``compacted``)."""

    def __init__(self, why: str, next_revision: int, *, compacted: bool = False) -> None:
        super().__init__(why)
        self.next_revision = next_revision
        self.compacted = compacted


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, *, what: str = "value") -> bytes:
    """Strict base64 from an etcd answer (anything else is a StateError)."""
    if text is None:
        return b""
    if not isinstance(text, str):
        raise StateError(f"etcd answered a {type(text).__name__} where base64 {what} belongs")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StateError(f"etcd answered malformed base64 for a {what}") from exc


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` of every key starting with ``prefix`` (etcd3gw's helper breaks
    on non-ASCII; ours never sees any, but stays correct anyway)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def as_int(value: object, what: str) -> int:
    """An int64 of the gateway (a JSON string, or absent: 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise StateError(f"etcd answered {value!r} for {what}")
    try:
        return int(value)
    except ValueError as exc:
        raise StateError(f"etcd answered {value!r} for {what}") from exc


def _session_class() -> type[Any]:
    import requests

    class TimeoutSession(requests.Session):
        """A default timeout on every request (etcd3gw 2.0.0 drops its own, and 2.7 never
        applies it to watches); no environment (REQUESTS_CA_BUNDLE would replace the CA)."""

        def __init__(self, timeout: float) -> None:
            super().__init__()
            self.default_timeout = timeout
            self.trust_env = False

        def request(self, method: Any, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs.setdefault("timeout", self.default_timeout)
            return super().request(method, url, **kwargs)

    return TimeoutSession


class _Member:
    def __init__(self, endpoint: str, settings: EtcdConfig, session_class: type[Any]) -> None:
        import etcd3gw

        scheme, _, hostport = endpoint.partition("://")
        host, _, port = hostport.rpartition(":")
        self.endpoint = endpoint
        self.client: Any = etcd3gw.Etcd3Client(
            host=host.strip("[]"),
            port=int(port),
            protocol=scheme,
            ca_cert=str(settings.ca) if settings.ca else None,
            cert_cert=str(settings.cert) if settings.cert else None,
            cert_key=str(settings.key) if settings.key else None,
            timeout=settings.timeout,
            api_path="/v3/",  # 2.0.0 defaults to /v3alpha/ (404 on etcd 3.4)
        )
        session = session_class(settings.timeout)
        if scheme == "https":
            session.verify = str(settings.ca) if settings.ca else True
            if settings.cert and settings.key:
                session.cert = (str(settings.cert), str(settings.key))
        self.client.session = session  # a plain attribute in both versions


class EtcdIO:
    """Clients for every member; calls go to the member that answered last, then the others."""

    def __init__(self, settings: EtcdConfig) -> None:
        try:
            import etcd3gw  # noqa: F401
            import requests  # noqa: F401
        except ImportError as exc:
            raise StateError(
                "store = etcd needs the etcd3gw library (Debian: apt install python3-etcd3gw; "
                "pip: pip install 'autoreg[etcd]')"
            ) from exc
        for path in (settings.ca, settings.cert, settings.key):
            if path is not None and not path.is_file():
                raise StateError(f"etcd TLS file {path} does not exist (etcd_ca/_cert/_key)")
        session_class = _session_class()
        self.settings = settings
        self.members = [_Member(e, settings, session_class) for e in settings.endpoints]
        self._preferred = 0
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return ",".join(self.settings.endpoints) + " " + self.settings.prefix

    def _order(self) -> list[_Member]:
        with self._lock:
            first = self._preferred
        return self.members[first:] + self.members[:first]

    def call(self, path: str, body: Mapping[str, Any], *, what: str, write: bool) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first member that answers; its JSON answer.

        ``what`` names the request in errors (a key, an operation).  Member-level
        failures (down, cut off, no quorum there) move on to the next member; the
        cluster's own refusals (compacted, lease not found, too large) raise at once.
        """
        import requests
        from etcd3gw import exceptions as etcd_errors

        failures: list[str] = []
        for member in self._order():
            try:
                answer = member.client.post(member.client.get_url(path), json=dict(body))
            except (
                etcd_errors.ConnectionFailedError,
                etcd_errors.ConnectionTimeoutError,
                etcd_errors.InternalServerError,
            ) as exc:
                failures.append(f"{member.endpoint}: {_reason(exc)}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise _refusal(exc, member.endpoint, what) from exc
            except requests.exceptions.RequestException as exc:  # not wrapped by etcd3gw
                failures.append(f"{member.endpoint}: {_reason(exc)}")
                continue
            except ValueError as exc:  # not JSON: whatever answered is not etcd's gateway
                failures.append(f"{member.endpoint}: answer is not JSON ({exc})")
                continue
            if not isinstance(answer, dict):
                failures.append(f"{member.endpoint}: answer is not a JSON object")
                continue
            with self._lock:
                self._preferred = self.members.index(member)
            return answer
        raise EtcdUnavailable(
            f"etcd: no member answered {what}: "
            + "; ".join(failures)
            + (" (the write may still be applied)" if write else ""),
            ambiguous=write,
        )

    # -- leases -----------------------------------------------------------------------

    def grant(self, ttl: float) -> int:
        answer = self.call("/lease/grant", {"TTL": int(ttl), "ID": 0}, what="a lease", write=True)
        lease = as_int(answer.get("ID"), "a lease ID")
        if lease <= 0:
            raise StateError(f"etcd granted no lease: {answer.get('error') or answer}")
        return lease

    def keepalive(self, lease: int) -> int:
        """One keep-alive of ``lease``: its TTL now, or :class:`LeaseLost`."""
        answer = self.call("/lease/keepalive", {"ID": lease}, what=f"lease {lease:x}", write=False)
        result = answer.get("result")
        ttl = as_int(result.get("TTL") if isinstance(result, dict) else None, "a lease TTL")
        if ttl <= 0:
            raise LeaseLost(f"etcd lease {lease:x} expired or was revoked")
        return ttl

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseLost):
            self.call("/kv/lease/revoke", {"ID": lease}, what=f"lease {lease:x}", write=True)

    # -- the cluster itself -------------------------------------------------------------

    def health(self) -> list[dict[str, Any]]:
        """Every member's own view (``/maintenance/status``): leader, revision, db size."""
        out: list[dict[str, Any]] = []
        for member in self.members:
            try:
                status = member.client.post(member.client.get_url("/maintenance/status"), json={})
            except Exception as exc:
                out.append({"endpoint": member.endpoint, "ok": False, "error": _reason(exc)})
                continue
            if not isinstance(status, dict):
                out.append({"endpoint": member.endpoint, "ok": False, "error": "bad answer"})
                continue
            header = _dict(status.get("header"))
            leader = str(status.get("leader") or "")
            errors = _list(status.get("errors"))
            out.append(
                {
                    "endpoint": member.endpoint,
                    "ok": bool(leader) and not errors,
                    "version": str(status.get("version", "?")),
                    "leader": leader == str(header.get("member_id", "")) if leader else None,
                    "has_leader": bool(leader),
                    "db_size": _int_or_none(status.get("dbSize")),
                    "errors": [str(e)[:200] for e in errors],
                }
            )
        return out

    # -- watches ---------------------------------------------------------------------------

    def watch(
        self, prefix: bytes, start_revision: int, stop: threading.Event
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(revision, events)`` for keys under ``prefix`` from ``start_revision`` on.

        Raises :class:`WatchLost` (with the revision to resume from) instead of hanging
        when the member dies, is cut off, or the revision was compacted; progress
        notifications advance the revision on a quiet prefix.  Each event's ``kv`` has
        ``key``/``value`` decoded to bytes; ``type`` is ``PUT`` or ``DELETE``.
        """
        import requests

        member = self._order()[0]
        request = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        next_revision = start_revision
        timeout = self.settings.timeout
        try:
            response = member.client.session.post(
                member.client.get_url("/watch"),
                json=request,
                stream=True,
                timeout=(timeout, timeout * WATCH_READ_TIMEOUTS),
            )
        except requests.exceptions.RequestException as exc:
            self._rotate(member)
            raise WatchLost(f"{member.endpoint}: {_reason(exc)}", next_revision) from exc
        try:
            if response.status_code != 200:
                self._rotate(member)
                raise WatchLost(
                    f"{member.endpoint}: HTTP {response.status_code} {response.text[:200]}",
                    next_revision,
                )
            closer = threading.Thread(
                target=_close_on_stop, args=(stop, response), daemon=True, name="autoreg-watch"
            )
            closer.start()
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if not line.strip():
                    continue
                message = json.loads(line)
                result = message.get("result") if isinstance(message, dict) else None
                if not isinstance(result, dict):
                    raise WatchLost(f"{member.endpoint}: stream error {str(message)[:200]}",
                                    next_revision)  # fmt: skip
                if result.get("canceled"):
                    compact = as_int(result.get("compact_revision"), "a compact revision")
                    raise WatchLost(
                        str(result.get("cancel_reason") or f"compacted at revision {compact}"),
                        max(next_revision, compact + 1),
                        compacted=compact > 0,
                    )
                header = _dict(result.get("header"))
                events = []
                for event in _list(result.get("events")):
                    kv = event.get("kv") if isinstance(event, dict) else None
                    if not isinstance(kv, dict):
                        continue
                    kv["key"] = unb64(kv.get("key"), what="key")
                    kv["value"] = unb64(kv.get("value"))
                    revision = as_int(kv.get("mod_revision"), "a revision")
                    next_revision = max(next_revision, revision + 1)
                    events.append({"type": event.get("type", "PUT"), "kv": kv})
                revision = as_int(header.get("revision"), "a revision")
                if not events and not result.get("created") and revision:
                    # a progress notification: nothing is pending up to this revision
                    next_revision = max(next_revision, revision + 1)
                yield next_revision, events
        except (requests.exceptions.RequestException, ValueError, StateError) as exc:
            if stop.is_set():
                return
            self._rotate(member)
            raise WatchLost(f"{member.endpoint}: {_reason(exc)}", next_revision) from exc
        finally:
            stop_closing(response)
        if not stop.is_set():
            raise WatchLost(f"{member.endpoint}: stream closed by the server", next_revision)

    def _rotate(self, member: _Member) -> None:
        """Prefer the next member (this one failed a watch)."""
        with self._lock:
            if self.members[self._preferred] is member:
                self._preferred = (self._preferred + 1) % len(self.members)


def _close_on_stop(stop: threading.Event, response: Any) -> None:
    """Unblock a watch reader when ``stop`` is set: shut its socket down."""
    while not stop.wait(1.0):
        if getattr(response, "_autoreg_done", False):
            return
    stop_closing(response, shutdown=True)


def stop_closing(response: Any, *, shutdown: bool = False) -> None:
    """Close a streamed response; with ``shutdown`` also its socket (from another thread)."""
    response._autoreg_done = True
    if shutdown:
        raw = getattr(response, "raw", None)
        connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _int_or_none(value: object) -> int | None:
    try:
        return as_int(value, "a number")
    except StateError:
        return None


def _reason(exc: BaseException) -> str:
    """One line for an etcd3gw/requests error: ``str(e)`` is empty on connection errors,
    the message is in ``detail_text``."""
    detail = getattr(exc, "detail_text", None) or ""
    text = str(exc) or type(exc).__name__
    if isinstance(detail, str) and detail.strip():
        try:
            parsed = json.loads(detail)
            if isinstance(parsed, dict) and parsed.get("error"):
                detail = str(parsed["error"])
        except ValueError:
            pass
        text = f"{text} {detail.strip()}".strip() if str(exc) else detail.strip()
    return " ".join(text.split())[:300]


def _refusal(exc: BaseException, endpoint: str, what: str) -> StateError:
    reason = _reason(exc)
    if "lease not found" in reason:
        return LeaseLost(f"etcd ({endpoint}): {what}: the lease expired or was revoked")
    if "compacted" in reason:
        return Compacted(f"etcd ({endpoint}): {what}: {reason}")
    if "database space exceeded" in reason:
        return StateError(
            f"etcd ({endpoint}): {what}: the cluster is out of space (NOSPACE alarm): "
            "compact, defragment every member, then `etcdctl alarm disarm` (docs/admin.md)"
        )
    return StateError(f"etcd ({endpoint}): {what}: {reason}")
