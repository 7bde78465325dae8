"""A registrar's HTTPS endpoint as a node sees it: its certificate pinned, its errors mapped.

The node talks to ``[node] registrar`` only if the server presents the certificate
whose SHA-256 fingerprint ``[node] registrar_fingerprint`` names (aiohttp's
``Fingerprint``: checked right after the handshake, before a byte of the request
is sent).  No CA, no trust on first use.  Every failure, from the socket to an
error answer, becomes one :class:`~registration._exceptions.RegistrarError`
saying what happened in words, ``from`` the library's exception.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import RegistrarError
from .._tls import fingerprint_digest
from ..protocol import (
    ANNOUNCE_PATH,
    METRICS_PATH,
    NODES_PATH,
    REGISTRAR_PATH,
    encode_announce_body,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["REQUEST_TIMEOUT", "RegistrarClient", "fingerprint_of_digest"]

#: Seconds for one request, connecting included.
REQUEST_TIMEOUT: Final = 10.0
#: Bytes of an answer read at most (answers are small JSON objects).
MAX_ANSWER: Final = 256 * 1024


class RegistrarClient:
    """``async with RegistrarClient(url, pin) as client``: requests to one registrar."""

    def __init__(
        self, url: str, fingerprint: str, *, timeout: float = REQUEST_TIMEOUT, connections: int = 4
    ) -> None:
        self.url = url.rstrip("/")
        self.fingerprint = fingerprint
        self._digest = fingerprint_digest(fingerprint)
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistrarClient:
        import aiohttp

        connector = aiohttp.TCPConnector(
            ssl=aiohttp.Fingerprint(self._digest), limit=self._connections
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": "autoreg-node"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def announce(self, txt: Mapping[str, str], port: int) -> dict[str, Any]:
        """POST the record; the registrar's answer (202: taken in)."""
        body = encode_announce_body(txt, port)
        _, answer = await self._request("POST", ANNOUNCE_PATH, body=body)
        return answer

    async def node(self, node_id: str, fingerprint: str) -> dict[str, Any] | None:
        """This node's state at the registrar; None when it does not know it (yet)."""
        status, answer = await self._request(
            "GET", f"{NODES_PATH}/{node_id}", params={"fp": fingerprint}, missing_ok=True
        )
        return None if status == 404 else answer

    async def describe(self) -> dict[str, Any]:
        """Who the registrar is (``GET /v1/registrar``)."""
        return (await self._request("GET", REGISTRAR_PATH))[1]

    async def metrics(self) -> str:
        status, text = await self._raw("GET", METRICS_PATH)
        if status != 200:
            raise RegistrarError(f"{self.url}{METRICS_PATH}: HTTP {status}", url=self.url,
                                 status=status)  # fmt: skip
        return text.decode("utf-8", "replace")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        status, raw, retry_after = await self._exchange(method, path, body, params)
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, ValueError):
            answer = None
        if not isinstance(answer, dict):
            raise RegistrarError(
                f"{self.url} answered {method} {path} with HTTP {status} and no JSON object "
                "(not an autoreg registrar?)",
                url=self.url,
                status=status,
            )
        if status < 400 or (missing_ok and status == 404 and answer.get("error") == "unknown-node"):
            return status, answer
        code = answer.get("error") if isinstance(answer.get("error"), str) else ""
        message = answer.get("message") if isinstance(answer.get("message"), str) else ""
        raise RegistrarError(
            f"the registrar at {self.url} refused {method} {path}: {message or 'no reason given'} "
            f"(HTTP {status}{', ' + str(code) if code else ''})",
            url=self.url,
            status=status,
            code=str(code),
            retry_after=retry_after,
        )

    async def _raw(self, method: str, path: str) -> tuple[int, bytes]:
        status, raw, _ = await self._exchange(method, path, None, None)
        return status, raw

    async def _exchange(
        self, method: str, path: str, body: bytes | None, params: Mapping[str, str] | None
    ) -> tuple[int, bytes, float | None]:
        """One request: (status, at most MAX_ANSWER bytes of body, Retry-After)."""
        import aiohttp

        if self._session is None:
            raise RuntimeError("RegistrarClient used outside `async with`")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            async with self._session.request(
                method, self.url + path, data=body, params=params, headers=headers,
                allow_redirects=False,
            ) as response:  # fmt: skip
                raw = await response.content.read(MAX_ANSWER)
                return response.status, raw, _retry_after(response.headers.get("Retry-After"))
        except aiohttp.ServerFingerprintMismatch as exc:
            got = fingerprint_of_digest(exc.got)
            raise RegistrarError(
                f"the registrar at {self.url} presented certificate {got}, not the pinned "
                f"{self.fingerprint}: not talking to it (check [node] registrar_fingerprint "
                "against `autoreg keys show` on the registrar)",
                url=self.url,
                code="pin-mismatch",
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise RegistrarError(
                f"no registrar answering at {self.url}: {exc.os_error.strerror or exc.os_error}",
                url=self.url,
            ) from exc
        except TimeoutError as exc:  # asyncio's, aiohttp's connect and read timeouts
            raise RegistrarError(
                f"no answer from {self.url} within {self._timeout:g} s", url=self.url
            ) from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise RegistrarError(
                f"talking to {self.url} failed: {type(exc).__name__}: {exc}", url=self.url
            ) from exc


def fingerprint_of_digest(digest: bytes) -> str:
    """A SHA-256 digest (what aiohttp reports) in the ``SHA256:…`` form nodes pin."""
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(3600.0, float(value.strip()))
