"""Who the node is, and which receipt counts as its own (registration/node/_identity.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registration._config import NodeConfig
from registration.node import _identity
from registration.node._identity import derive_node_id, self_registration_state


def receipt(path: Path, node_id: str | None) -> None:
    body = {"v": 1, "registrar_role": "clc"}
    if node_id is not None:
        body["node_id"] = node_id
    path.write_text(json.dumps(body))


def test_only_a_receipt_for_this_node_id_counts(tmp_path: Path) -> None:
    path = tmp_path / "receipt.json"
    node = NodeConfig(node_id="cc000001", receipt_path=path)
    assert self_registration_state(node) is None
    receipt(path, "cc000001")
    assert self_registration_state(node) == f"receipt from clc at {path}"
    for other in ("walrus01", None):  # another node's, or one that names none
        receipt(path, other)
        assert self_registration_state(node) is None


def test_without_an_explicit_id_the_derived_id_is_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(_identity, "MACHINE_ID_PATHS", (machine_id,))
    mine = derive_node_id((machine_id,))
    path = tmp_path / "receipt.json"
    node = NodeConfig(node_id=None, receipt_path=path)
    receipt(path, "walrus01")
    assert self_registration_state(node) is None  # absent [node] id is never "any"
    receipt(path, mine)
    assert self_registration_state(node) is not None


def test_no_machine_id_means_no_receipt_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_identity, "MACHINE_ID_PATHS", (tmp_path / "none",))
    path = tmp_path / "receipt.json"
    receipt(path, "walrus01")
    assert self_registration_state(NodeConfig(node_id=None, receipt_path=path)) is None
