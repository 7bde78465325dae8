"""What a machine, or a ``--via`` node, sends back is checked before it is believed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registration._exceptions import AutoregError, SSHError
from registration.bootstrap._remote_host import _parse_facts
from registration.bootstrap._via import _report


class _Target:
    host = "198.18.0.9"
    port = 22


class _Session:
    target = _Target()


def facts(**change: Any) -> str:
    raw = {"python": [3, 11], "hostname": "nc1", "systemd": False, "cached": False,
           "reachable": None, "uid": 0}  # fmt: skip
    raw.update(change)
    return json.dumps(raw)


def test_facts_are_read_from_the_last_line() -> None:
    parsed = _parse_facts("motd noise\n" + facts(cached=True, reachable=False), _Session())  # type: ignore[arg-type]
    assert parsed.cached and parsed.registrar_reachable is False and parsed.python == (3, 11)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "something else than its facts"),
        ("not json", "something else than its facts"),
        (json.dumps({"python": [3]}), "something else than its facts"),
        (facts(uid="root"), "something else than its facts"),
        (facts(python=[3, 9]), "python3 is 3.9; the agent needs 3.11"),
    ],
)
def test_bad_facts_are_an_error_that_says_so(text: str, says: str) -> None:
    with pytest.raises(SSHError, match=says):
        _parse_facts(text, _Session())  # type: ignore[arg-type]


def test_truthy_but_not_true_is_false() -> None:
    parsed = _parse_facts(facts(systemd="yes", cached=1, reachable="no"), _Session())  # type: ignore[arg-type]
    assert not parsed.systemd and not parsed.cached and parsed.registrar_reachable is None


def summary(**target: Any) -> bytes:
    row = {"target": "198.18.0.5", "state": "registered", "ok": True, "node_id": "ab" * 8,
           "name": "nc1", "fingerprint": "SHA256:x", "copied": True, "route": "mdns",
           "agent": "background process 7", "detail": ""}  # fmt: skip
    row.update(target)
    return json.dumps({"bundle": "autoreg-1-aa.pyz", "elapsed": 1.5, "copied_bytes": 10,
                       "targets": [row]}).encode()  # fmt: skip


def test_a_via_summary_is_rebuilt_field_by_field() -> None:
    report = _report("cc1", summary(name="\x1b[2Jevil", ok="yes", copied=1))
    (row,) = report.results
    assert row.name == "\\x1b[2Jevil"  # escaped, never raw to the terminal
    assert row.ok is False and row.copied is False  # only a real true is true
    assert row.route == "via cc1: mdns"


@pytest.mark.parametrize(
    "data", [b"", b"[]", b'{"targets": 5}', summary()[:-20], b'{"targets": [1]}']
)
def test_a_broken_via_summary_is_an_error(data: bytes) -> None:
    with pytest.raises(AutoregError, match="--via cc1: its summary is not what bootstrap prints"):
        _report("cc1", data)
