"""The HTTPS registration API, version 1: paths, limits and the announcement body.

A node that no mDNS browser can hear posts the very record it would announce
over mDNS: the TXT keys as a JSON object, and the port its sshd listens on (the
SRV port).  The registrar decodes it with the same codec (``decode_node``),
limits and signature rules; see docs/protocol.md ("HTTPS registration API").

    POST /v1/announce        {"port": 22, "txt": {"v": "1", "role": "nc", …, "sig": "…"}}
    GET  /v1/nodes/ID?fp=SHA256:…
    GET  /v1/registrar
    GET  /metrics

Both sides use this module: what the announcer sends is what the daemon parses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .._exceptions import AnnouncementError

__all__ = [
    "ANNOUNCE_PATH",
    "API_VERSION",
    "MAX_BODY",
    "MAX_TXT_KEYS",
    "METRICS_PATH",
    "NODES_PATH",
    "REGISTRAR_PATH",
    "decode_announce_body",
    "encode_announce_body",
    "parse_json_object",
]

API_VERSION: Final = "v1"
ANNOUNCE_PATH: Final = f"/{API_VERSION}/announce"
NODES_PATH: Final = f"/{API_VERSION}/nodes"
REGISTRAR_PATH: Final = f"/{API_VERSION}/registrar"
METRICS_PATH: Final = "/metrics"
#: Bytes a request body may have: a signed record of the longest kind is under 400 bytes
#: of TXT (1300 at most, RFC 6763 §6.2); JSON escapes may multiply that by six.
MAX_BODY: Final = 16 * 1024
#: TXT keys a posted record may have (a 1300-byte TXT record cannot hold more).
MAX_TXT_KEYS: Final = 64


def encode_announce_body(txt: Mapping[str, str], port: int) -> bytes:
    """The POST body for a node record (``encode_node``'s TXT properties and the port)."""
    return json.dumps({"port": port, "txt": dict(txt)}, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {ascii(key)[:40]} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object: UTF-8, no duplicate keys, no NaN; AnnouncementError."""
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError as exc:
        raise AnnouncementError("not UTF-8", field="json") from exc
    except RecursionError as exc:
        raise AnnouncementError("nested too deeply", field="json") from exc
    except ValueError as exc:  # json.JSONDecodeError is one
        raise AnnouncementError(f"not valid JSON: {str(exc)[:120]}", field="json") from exc
    if not isinstance(value, dict):
        raise AnnouncementError(f"want a JSON object, not {type(value).__name__}", field="json")
    return value


def decode_announce_body(body: bytes) -> tuple[dict[str, str | None], int]:
    """The TXT properties and port of a posted record (not validated as a record yet:
    ``decode_node`` does that, as for mDNS).  AnnouncementError names what is wrong."""
    value = parse_json_object(body)
    port = value.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise AnnouncementError('want the sshd port as a number, e.g. "port": 22', field="port")
    txt = value.get("txt")
    if not isinstance(txt, dict):
        raise AnnouncementError(
            'want the TXT record as an object of strings, e.g. "txt": {"v": "1", …}',
            field="txt",
        )
    if len(txt) > MAX_TXT_KEYS:
        raise AnnouncementError(f"more than {MAX_TXT_KEYS} keys", field="txt")
    out: dict[str, str | None] = {}
    for key, item in txt.items():
        if item is not None and not isinstance(item, str):
            raise AnnouncementError(
                f"the value of {ascii(key)[:40]} is {type(item).__name__}, not a string",
                field="txt",
            )
        out[key] = item
    return out, port
