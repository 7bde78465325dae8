"""What a new admin trips over: commands as the docs write them, errors that say how to fix.

Offline (click's CliRunner, a state directory in tmp_path): ``events`` and
``show`` with hook runs, ``list --state``, ``lockdown status``, and the
configuration errors of ``announce`` (which never gets as far as the network
when its flags are wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli_offline import Env

import registration._config as config_module
from registration._config import ENV_OVERRIDES
from registration.state import NodeState
from support.records import put_sync
from support.sync_store import SyncStore

NODE = "n1abc-node"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    for var in [*ENV_OVERRIDES, "AUTOREG_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "autoreg.conf"
    config.write_text(f"[autoreg]\nkeys_dir = {tmp_path / 'keys'}\n")
    return Env(tmp_path, config, tmp_path / "state")


def hook_run(
    env: Env,
    *,
    stdout_lines: int = 45,
    stdout_kept: int | None = None,
    status: str = "exit 3",
    kind: str = "hook-failed",
) -> None:
    """A failed node with one recorded hook run (what the daemon's ``_hook_data`` writes)."""
    kept = stdout_lines if stdout_kept is None else stdout_kept
    first = stdout_lines - kept
    data: dict[str, Any] = {
        "hook": "/etc/autoreg/hooks.d/cc",
        "command": "/etc/autoreg/hooks.d/cc",
        "exit": 3,
        "status": status,
        "pid": 4242,
        "timed_out": False,
        "interrupted": False,
        "duration": 1.5,
        "stdout": "".join(f"step {i}\n" for i in range(first, stdout_lines)),
        "stderr": "cc: error: euca_conf failed\n",
        "stdout_lines": stdout_lines,
        "stderr_lines": 1,
    }
    put_sync(env.db, NODE, NodeState.FAILED, role="cc", cluster="foo")
    with SyncStore(env.db) as store:
        store.add_event(NODE, kind, f"attempt 1/3 failed: hook failed ({status})", data)


# -- show: how a hook run ended, and what of its output is shown ----------


def test_show_says_how_the_hook_ended_and_when_output_was_cut(env: Env) -> None:
    hook_run(env)
    text = env.ok("show", NODE).stdout
    assert f"[hook: exit 3; 46 line(s) of output: `autoreg show {NODE}`]" in text
    assert f"stdout: (output cut: last 20 of 45 lines shown; `autoreg show {NODE} --full`)" in text
    assert "| step 44" in text and "| step 25" in text and "| step 24" not in text
    assert "    stderr:\n      | cc: error: euca_conf failed" in text


def test_show_full_prints_all_that_was_kept(env: Env) -> None:
    hook_run(env)
    text = env.ok("show", NODE, "--full").stdout
    assert "output cut" not in text
    assert all(f"| step {i}\n" in text for i in range(45))


def test_show_full_says_what_the_daemon_did_not_keep(env: Env) -> None:
    hook_run(env, stdout_lines=5000, stdout_kept=400)
    text = env.ok("show", NODE, "--full").stdout
    assert (
        "stdout: (output cut: last 400 of 5000 lines shown: "
        "the daemon keeps the last 16 KiB of each stream)"
    ) in text
    assert "| step 4600\n" in text and "| step 4599\n" not in text
    short = env.ok("show", NODE).stdout
    assert f"(output cut: last 20 of 5000 lines shown; `autoreg show {NODE} --full`)" in short


def test_show_help_documents_the_bound(env: Env) -> None:
    assert "16 KiB" in env.ok("show", "--help").stdout


# -- events: a node as an argument, the hook's status, -n ----------


def test_events_takes_the_node_as_an_argument(env: Env) -> None:
    hook_run(env)
    put_sync(env.db, "other-node", NodeState.SEEN, role="nc", cluster="foo")
    positional = env.ok("events", NODE).stdout
    assert positional == env.ok("events", "--node", NODE).stdout
    assert "other-node" not in positional
    assert "hook-failed" in positional


def test_events_for_two_different_nodes_is_a_usage_error(env: Env) -> None:
    hook_run(env)
    result = env.run("events", NODE, "--node", "other")
    assert result.exit_code == 2
    assert "two nodes given" in result.stderr


def test_events_shows_the_node_and_the_hook_status(env: Env) -> None:
    hook_run(env)
    line = next(x for x in env.ok("events").stdout.splitlines() if "hook-failed" in x)
    assert f" {NODE} " in line  # all nodes' events: each line says whose
    assert line.endswith(f"[hook: exit 3; 46 line(s) of output: `autoreg show {NODE}`]")
    (event,) = [
        json.loads(x)
        for x in env.ok("events", "--json").stdout.splitlines()
        if json.loads(x)["kind"] == "hook-failed"
    ]
    assert event["data"]["status"] == "exit 3"
    assert event["data"]["stdout_lines"] == 45


def test_events_follow_with_no_history(env: Env) -> None:
    hook_run(env)
    assert env.ok("events", "--follow", "-n", "0", "--timeout", "0.3").stdout == ""
    two = env.ok("events", "--follow", "-n", "2", "--timeout", "0.3").stdout.splitlines()
    assert len(two) == 2 and "hook-failed" in two[-1]


def test_events_negative_count_is_a_usage_error(env: Env) -> None:
    env.init_store()
    assert env.run("events", "-n", "-1").exit_code == 2


# -- announce: a bad flag is a usage error naming the flag, before anything is sent ----------


@pytest.fixture
def no_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a check let a bad flag through, fail here instead of announcing from this host."""
    import registration.cli as cli_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the announcer was started: the flags should have been refused")

    monkeypatch.setattr(cli_module, "_run_service", refuse)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--role", "walrsu"],
            "--role: role 'walrsu' is not in profile 'eucalyptus' (roles: cc, clc, nc, sc, walrus)",
        ),
        (
            ["--role", "walrus", "--id", "sc1"],
            "--id: invalid value 'sc1': must be 4-40 characters of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit",
        ),
        (
            ["--role", "walrus", "--cluster", "foo"],
            "--cluster: role 'walrus' has no cluster in profile 'eucalyptus': drop cluster 'foo'",
        ),
        (["--role", "nc", "--name", "my_host"], "--name: invalid value 'my_host'"),
    ],
)
def test_announce_refuses_bad_flags_naming_them(
    env: Env, no_service: None, flags: list[str], expected: str
) -> None:
    result = env.run("announce", *flags)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"Error: {expected}" in result.stderr
    assert str(env.config) not in result.stderr  # the file is not to blame


def test_daemon_role_flag_is_named(env: Env, no_service: None) -> None:
    result = env.run("daemon", "--role", "nc", "--cluster", "foo")
    assert result.exit_code == 2
    assert "--role: role 'nc' registers nothing" in result.stderr


def test_announce_bad_value_in_the_file_names_the_file(env: Env, no_service: None) -> None:
    env.config.write_text("[node]\nrole = walrus\ncluster = foo\n")
    result = env.run("announce")
    assert result.exit_code == 78
    assert f"{env.config} [node]: role 'walrus' has no cluster" in result.stderr


def test_empty_autoreg_config_is_not_the_current_directory(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOREG_CONFIG", "")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", env.tmp / "absent" / "autoreg.conf")
    from click.testing import CliRunner

    from registration.cli import cli

    result = CliRunner().invoke(cli, ["--state-dir", str(env.state), "list"])
    assert "Is a directory" not in result.stderr
    assert "no state database" in result.stderr  # the default file is absent: defaults apply


# -- list --state, lockdown status ----------


def test_list_unknown_state_is_a_usage_error_listing_the_states(env: Env) -> None:
    env.init_store()
    result = env.run("list", "--state", "bogus")
    assert result.exit_code == 2
    assert "'bogus' is not one of" in result.stderr
    for state in ("seen", "waiting", "registered", "failed", "interrupted", "conflict"):
        assert f"'{state}'" in result.stderr


def test_lockdown_status_says_that_all_roles_wins(env: Env) -> None:
    env.ok("lockdown", "on")
    result = env.ok("lockdown", "off", "--role", "walrus")
    assert "lockdown is on for all roles, and that wins: walrus stays locked" in result.stderr
    assert env.ok("lockdown", "status").stdout == (
        "all roles: on\n"
        "walrus: off (locked all the same: the switch for all roles is on, and it wins)\n"
    )
    env.ok("lockdown", "off")
    assert env.ok("lockdown", "status").stdout == "all roles: off\nwalrus: off\n"
    assert "stays locked" not in env.ok("lockdown", "off", "--role", "walrus").stderr
