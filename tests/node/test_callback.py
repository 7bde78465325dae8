"""The callback service's ssh command line and backoff (the live tunnel is in integration)."""

from __future__ import annotations

from pathlib import Path

from registration import load_config
from registration.node._callback import _next_delay, ssh_command


def test_ssh_command_pins_the_controller_and_forwards_only_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        "[callback]\ncontroller = 10.0.0.1\nlisten_ports = 20000, 20001\n"
        "forward = 10.0.0.5:2200\nkeepalive_interval = 2\n"
    )
    argv = ssh_command(load_config(conf, env={}), "10.0.0.1", 20001)
    joined = " ".join(argv)
    assert argv[:3] == ["ssh", "-N", "-T"]
    assert "-F /dev/null" in joined  # no user ssh_config can change the behaviour
    for option in (
        "StrictHostKeyChecking=yes",
        "ExitOnForwardFailure=yes",
        "BatchMode=yes",
        "ServerAliveInterval=2",
        "HostKeyAlias=autoreg-controller",
        "GlobalKnownHostsFile=/dev/null",
    ):
        assert option in argv
    assert argv[-2:] == ["127.0.0.1:20001:10.0.0.5:2200", "autoreg-callback@10.0.0.1"]
    assert argv[-3] == "-R"


def test_backoff_grows_is_jittered_bounded_and_resets() -> None:
    delays = []
    delay = None
    for _ in range(12):
        delay = _next_delay(delay, 1.0, 60.0, reset=False)
        delays.append(delay)
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert max(delays[-4:]) > 10  # it grew
    assert _next_delay(59.0, 1.0, 60.0, reset=True) <= 1.0  # a stable session starts over
