"""The HTTPS endpoint's keys: [controller] listen, listen_rate; [node] registrar and its pin."""

from __future__ import annotations

from pathlib import Path

import pytest

from registration._config import load_config
from registration._exceptions import ConfigError

PIN = "SHA256:" + "A" * 42 + "E"


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "autoreg.conf"
    path.write_text(text)
    return load_config(path, env={})


def test_the_endpoint_is_off_unless_listen_is_set(tmp_path: Path) -> None:
    config = load(tmp_path, "[controller]\nrole = clc\n")
    assert config.controller.listen is None
    assert config.controller.listen_rate == 10.0
    text = "[controller]\nrole = clc\nlisten = 198.18.0.1:8443\nlisten_rate = 50\n"
    config = load(tmp_path, text)
    assert (config.controller.listen, config.controller.listen_rate) == (("198.18.0.1", 8443), 50)


def test_a_node_names_its_registrar_with_the_certificate_it_pins(tmp_path: Path) -> None:
    config = load(tmp_path, f"[node]\nregistrar = https://198.18.0.1:8443/\n"
                            f"registrar_fingerprint = {PIN}\n")  # fmt: skip
    assert (config.node.registrar, config.node.registrar_fingerprint) == (
        "https://198.18.0.1:8443",
        PIN,
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[node]\nregistrar = https://clc:8443\n", "without registrar_fingerprint"),
        (f"[node]\nregistrar_fingerprint = {PIN}\n", "without registrar = https"),
        ("[node]\nregistrar = http://clc:8443\nregistrar_fingerprint = x\n", "HTTPS only"),
        ("[node]\nregistrar = https://clc:8443\nregistrar_fingerprint = SHA1:x\n", "SHA256:"),
        ("[controller]\nlisten = clc:8443\n", "not an IP address"),
        ("[controller]\nlisten_rate = 0\n", "requests per second"),
        ("[controller]\nlisten_port = 8443\n", "unknown key 'listen_port'"),
    ],
)
def test_bad_values_name_the_rule(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(tmp_path, text)
