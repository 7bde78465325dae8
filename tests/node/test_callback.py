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


# -- controller = auto: which announced registrar to call ----------

from registration.node._callback import rank_registrars  # noqa: E402
from registration.protocol import RegistrarAnnouncement  # noqa: E402

PIN = "SHA256:" + "P" * 43


def _reg(node_id: str, state: str, fp: str | None, role: str = "clc") -> RegistrarAnnouncement:
    return RegistrarAnnouncement(
        node_id=node_id, role=role, ip=f"198.18.0.{len(node_id)}", port=22,
        state=state, fingerprint=fp,  # type: ignore[arg-type]
    )  # fmt: skip


def test_active_registrars_with_the_pinned_key_come_first() -> None:
    found = [
        _reg("aaaa-impostor", "active", None),  # first by id, announces no key
        _reg("bbbb-standby", "standby", PIN),
        _reg("zzzz-real", "active", PIN),
        _reg("cccc-cc", "active", PIN, role="cc"),  # another role: not a candidate
    ]
    ranked = rank_registrars(found, role="clc", cluster=None, pin=PIN)
    assert [r.node_id for r, _ in ranked] == ["zzzz-real", "aaaa-impostor", "bbbb-standby"]
    assert ranked[0][1] == "active, announces the pinned host key"
    assert ranked[1][1] == "active, does not announce the pinned host key"


def test_without_a_readable_pin_state_and_id_decide() -> None:
    found = [_reg("bbbb", "locked", PIN), _reg("aaaa", "active", None)]
    ranked = rank_registrars(found, role="clc", cluster=None, pin=None)
    assert [r.node_id for r, _ in ranked] == ["aaaa", "bbbb"]
