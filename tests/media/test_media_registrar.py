"""Media for nodes in other networks: `--registrar URL` puts the registrar's HTTPS
endpoint and its pinned certificate into the node's configuration."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from medialab import Controller

PIN = "SHA256:" + "Q" * 42 + "E"


def node_conf(script: str) -> configparser.ConfigParser:
    """The drop-in the script writes (50-medium.conf), parsed."""
    body = script.split("50-medium.conf", 1)[1].split("\n", 1)[1]
    body = body.split("AUTOREG_EOF", 1)[0]
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(body)
    return parsed


def test_the_url_and_this_registrars_pin_go_on_the_medium(controller: Controller) -> None:
    pin = controller.json("keys", "show", "--json")["api_fingerprint"]
    assert pin.startswith("SHA256:")
    script = controller.run("media", "script", "--role", "cc", "--cluster", "c2",
                            "--registrar", "https://198.18.0.1:8443/").stdout  # fmt: skip
    node = node_conf(script)["node"]
    assert (node["registrar"], node["registrar_fingerprint"]) == ("https://198.18.0.1:8443", pin)
    assert node["token_file"]  # posts are signed: the medium's join token


def test_another_registrars_pin_can_be_given(controller: Controller, tmp_path: Path) -> None:
    for path in controller.keys.glob("api.*"):
        path.unlink()  # this host has no HTTPS certificate: the pin must be given
    script = controller.run("media", "script", "--role", "nc", "--cluster", "c2",
                            "--registrar", "https://cc2.example:8443",
                            "--registrar-fingerprint", PIN).stdout  # fmt: skip
    node = node_conf(script)["node"]
    assert (node["registrar"], node["registrar_fingerprint"]) == ("https://cc2.example:8443", PIN)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--registrar", "http://198.18.0.1:8443"], "--registrar: want https://HOST:PORT"),
        (["--registrar", "https://198.18.0.1"], "--registrar: name the port"),
        (["--registrar-fingerprint", PIN], "--registrar-fingerprint needs --registrar"),
        (["--registrar", "https://a:1", "--registrar-fingerprint", "MD5:x"],
         "--registrar-fingerprint: want SHA256:"),
    ],
)  # fmt: skip
def test_bad_registrar_options_are_refused(
    controller: Controller, args: list[str], message: str
) -> None:
    result = controller.run("media", "script", "--role", "walrus", *args, check=False)
    assert (result.returncode, result.stdout) == (78, "")
    assert message in result.stderr


def test_without_a_certificate_and_no_pin_it_says_how_to_get_one(controller: Controller) -> None:
    for path in controller.keys.glob("api.*"):
        path.unlink()
    result = controller.run("media", "script", "--role", "walrus",
                            "--registrar", "https://198.18.0.1:8443", check=False)  # fmt: skip
    assert result.returncode == 78
    assert "autoreg keys init" in result.stderr and "--registrar-fingerprint" in result.stderr
