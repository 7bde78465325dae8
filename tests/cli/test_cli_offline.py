"""The ``autoreg`` command line without a daemon or a network (click's CliRunner).

Every command runs against a state directory and a configuration file in
tmp_path; exit codes follow registration/cli/__init__.py (66 no such node,
73 key material, 74 state store, 78 configuration, 2 usage).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from registration._config import ENV_OVERRIDES
from registration.cli import cli
from registration.state import SCHEMA_VERSION, NodeState
from support.records import put_sync
from support.sync_store import SyncStore

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


@dataclasses.dataclass
class Env:
    tmp: Path
    config: Path
    state: Path

    @property
    def db(self) -> Path:
        return self.state / "autoreg.db"

    @property
    def keys(self) -> Path:
        return self.tmp / "keys"

    def run(self, *args: str, input: str | None = None) -> Result:
        argv = ["-c", str(self.config), "--state-dir", str(self.state), *args]
        return CliRunner().invoke(cli, argv, input=input, catch_exceptions=True)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args).stdout)

    def init_store(self) -> None:
        SyncStore(self.db).close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    for var in [*ENV_OVERRIDES, "AUTOREG_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "autoreg.conf"
    config.write_text(f"[autoreg]\nkeys_dir = {tmp_path / 'keys'}\n")
    return Env(tmp_path, config, tmp_path / "state")


def register_args(ip: str = "198.18.0.5", *extra: str) -> list[str]:
    return ["register", "--role", "nc", "--cluster", "foo", "--ip", ip, "--fingerprint", FP, *extra]


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = _command_paths(cli)


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {
        "daemon",
        "announce",
        "list",
        "show",
        "events",
        "status",
        "lockdown",
        "register",
        "forget",
        "retry",
        "keys init",
        "keys show",
    } <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "autoreg")
def test_help(env: Env, path: tuple[str, ...]) -> None:
    result = env.ok(*path, "--help")
    assert "Usage:" in result.stdout
    assert not env.db.exists()  # help touches nothing


def test_version(env: Env) -> None:
    assert "autoreg" in env.ok("--version").stdout


# -- list ----------


def test_list_before_any_state_exists(env: Env) -> None:
    result = env.run("list")
    assert result.exit_code == 74
    assert "no state database" in result.stderr
    assert not env.db.exists()  # a read-only command creates nothing


def test_list_on_an_empty_store(env: Env) -> None:
    env.init_store()
    result = env.ok("list")
    assert result.stdout == ""
    assert "no nodes known yet" in result.stderr
    assert env.json("list", "--json") == []


# -- lockdown ----------


def test_lockdown_per_role_then_status(env: Env) -> None:
    assert env.ok("lockdown", "on", "--role", "nc", "--reason", "maintenance").stdout == (
        "lockdown on for nc\n"
    )
    assert env.json("lockdown", "status", "--json") == {"nc": True}
    assert env.ok("lockdown", "status").stdout == "all roles: off\nnc: on\n"
    env.ok("lockdown", "on")
    env.ok("lockdown", "off", "--role", "nc")
    assert env.json("lockdown", "status", "--json") == {"*": True, "nc": False}
    assert env.ok("lockdown", "status").stdout == (
        "all roles: on\n"
        "nc: off (locked all the same: the switch for all roles is on, and it wins)\n"
    )
    with SyncStore(env.db, readonly=True) as store:
        messages = [e.message for e in store.events() if e.kind == "lockdown"]
    assert messages[0] == "lockdown on for registration of role nc: maintenance"


def test_lockdown_status_with_nothing_set(env: Env) -> None:
    env.init_store()
    assert env.ok("lockdown", "status").stdout == "all roles: off\n"


def test_lockdown_unknown_role(env: Env) -> None:
    result = env.run("lockdown", "on", "--role", "bogus")
    assert result.exit_code == 78
    assert "unknown role 'bogus'" in result.stderr
    assert "cc, clc, nc, sc, walrus" in result.stderr
    assert not env.db.exists()


def test_lockdown_bad_switch_is_a_usage_error(env: Env) -> None:
    assert env.run("lockdown", "maybe").exit_code == 2


# -- register / list / show ----------


def test_register_bad_fingerprint_is_a_usage_error(env: Env) -> None:
    result = env.run(
        "register", "--role", "nc", "--cluster", "foo", "--ip", "198.18.0.5",
        "--fingerprint", "SHA256:short",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "fp" in result.stderr
    assert not env.db.exists()


def test_register_bad_ip_is_a_usage_error(env: Env) -> None:
    result = env.run(*register_args("224.0.0.251"))
    assert result.exit_code == 2
    assert "ip" in result.stderr


def test_register_unknown_role(env: Env) -> None:
    result = env.run("register", "--role", "web", "--ip", "198.18.0.5", "--fingerprint", FP)
    assert result.exit_code == 78
    assert "unknown role 'web'" in result.stderr


def test_register_then_list(env: Env) -> None:
    result = env.ok(*register_args("198.18.0.5", "--name", "node1", "--port", "2222"))
    assert result.stdout == "queued nc node1 (m-198-18-0-5) for registration\n"
    (node,) = env.json("list", "--json")
    assert node["node_id"] == "m-198-18-0-5"
    assert node["state"] == "seen"
    assert node["source"] == "manual"
    assert (node["role"], node["cluster"], node["ip"], node["port"]) == (
        "nc",
        "foo",
        "198.18.0.5",
        2222,
    )
    assert node["fingerprint"] == FP
    assert node["present"] is True
    table = env.ok("list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "ROLE"]
    assert "m-198-18-0-5" in table[1]
    assert "seen" in table[1]
    assert env.json("list", "--json", "--state", "registered") == []
    assert env.json("list", "--json", "--role", "cc") == []
    assert len(env.json("list", "--json", "--state", "seen", "--role", "nc")) == 1


@pytest.mark.parametrize("ref", ["m-198-18-0-5", "m-198-18", "node1", "198.18.0.5"])
def test_show(env: Env, ref: str) -> None:
    env.ok(*register_args("198.18.0.5", "--name", "node1"))
    shown = env.json("show", ref, "--json")
    assert shown["node"]["node_id"] == "m-198-18-0-5"
    assert [e["kind"] for e in shown["events"]] == ["manual"]
    text = env.ok("show", ref).stdout
    assert "source: manual" in text
    assert "events:" in text


def test_show_unknown_node(env: Env) -> None:
    env.init_store()
    result = env.run("show", "nothere")
    assert result.exit_code == 66
    assert "no node 'nothere'" in result.stderr


def test_show_ambiguous_prefix(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    env.ok(*register_args("198.18.0.6"))
    result = env.run("show", "m-198")
    assert result.exit_code == 66
    assert "ambiguous" in result.stderr


def test_events(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    lines = env.ok("events", "--json").stdout.splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[-1] == "manual"
    only_node = env.ok("events", "--json", "--node", "m-198-18-0-5").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in only_node] == ["manual"]


# -- forget / retry ----------


def test_forget_yes(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    result = env.ok("forget", "--yes", "m-198-18-0-5")
    assert result.stdout == "forgot nc m-198-18-0-5 (m-198-18-0-5), was seen\n"
    assert env.json("list", "--json") == []
    assert env.run("show", "m-198-18-0-5").exit_code == 66


def test_forget_asks_and_can_be_declined(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    result = env.run("forget", "m-198-18-0-5", input="n\n")
    assert result.exit_code == 1  # click.Abort
    assert len(env.json("list", "--json")) == 1


def test_forget_unknown(env: Env) -> None:
    env.init_store()
    assert env.run("forget", "--yes", "nothere").exit_code == 66


def _set_state(env: Env, node_id: str, state: NodeState) -> None:
    """Walk the (manually registered, so `seen`) node to ``state`` by legal steps."""
    with SyncStore(env.db) as store:
        rec = store.get(node_id)
        assert rec is not None and rec.state is NodeState.SEEN
    put_sync(
        env.db,
        node_id,
        state,
        source=rec.source,
        ip=rec.ip,
        port=rec.port,
        role=rec.role,
        cluster=rec.cluster,
        fingerprint=rec.fingerprint,
    )


def test_retry_of_a_registered_node_fails(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    _set_state(env, "m-198-18-0-5", NodeState.REGISTERED)
    result = env.run("retry", "m-198-18-0-5")
    assert result.exit_code == 1
    assert "nothing to retry" in result.stderr
    assert env.json("list", "--json")[0]["state"] == "registered"


def test_register_again_over_a_registered_node_fails(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    _set_state(env, "m-198-18-0-5", NodeState.REGISTERED)
    result = env.run(*register_args("198.18.0.5"))
    assert result.exit_code == 1
    assert "already registered" in result.stderr


@pytest.mark.parametrize(
    ("state", "resumed"), [(NodeState.FAILED, False), (NodeState.INTERRUPTED, True)]
)
def test_retry_of_a_failed_node(env: Env, state: NodeState, resumed: bool) -> None:
    env.ok(*register_args("198.18.0.5"))
    _set_state(env, "m-198-18-0-5", state)
    result = env.ok("retry", "m-198")
    assert result.stdout.startswith("m-198-18-0-5: will be retried")
    assert ("AUTOREG_RESUMED=1" in result.stdout) is resumed
    (node,) = env.json("list", "--json")
    assert (node["state"], node["resumed"], node["attempts"]) == ("seen", resumed, 0)


# -- keys ----------


def test_keys_init_is_idempotent(env: Env) -> None:
    first = env.ok("keys", "init")
    assert first.stderr.startswith(f"created {env.keys / 'controller_ed25519'}")
    private = (env.keys / "controller_ed25519").read_bytes()
    second = env.ok("keys", "init")
    assert second.stderr.startswith(f"kept existing {env.keys / 'controller_ed25519'}")
    assert second.stdout == first.stdout
    assert first.stdout.startswith("ssh-ed25519 ")
    assert (env.keys / "controller_ed25519").read_bytes() == private


def test_keys_show(env: Env) -> None:
    assert env.run("keys", "show").exit_code == 73  # not created yet
    public_line = env.ok("keys", "init").stdout.strip()
    shown = env.json("keys", "show", "--json")
    assert shown["path"] == str(env.keys / "controller_ed25519")
    assert shown["type"] == "ssh-ed25519"
    assert shown["public_key"] == public_line
    assert shown["fingerprint"].startswith("SHA256:")
    assert shown["fingerprint"] in env.ok("keys", "init").stderr
    text = env.ok("keys", "show").stdout.splitlines()
    assert text[-1] == public_line


# -- status ----------


def test_status_json_before_anything(env: Env) -> None:
    report = env.json("status", "--json")
    assert report["daemon"] is None
    assert report["config"] == str(env.config)
    assert report["state_dir"] == str(env.state)
    assert report["profile"] == "eucalyptus"
    assert "no state database" in report["state_error"]
    assert report["controller_key"] is None


def test_status_json_with_state(env: Env) -> None:
    env.ok(*register_args("198.18.0.5"))
    env.ok("lockdown", "on", "--role", "cc")
    env.ok("keys", "init")
    fingerprint = env.json("keys", "show", "--json")["fingerprint"]
    report = env.json("status", "--json")
    assert report["nodes"] == {"seen": 1}
    assert report["lockdown"] == {"cc": True}
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["controller_key"] == fingerprint
    text = env.ok("status").stdout
    assert "daemon: not running" in text
    assert "nodes: 1 seen" in text
    assert "lockdown: cc" in text


# -- configuration errors ----------


def test_corrupt_config_file(env: Env) -> None:
    env.config.write_text("this is [not an ini file\n")
    for args in (["list"], ["status"], ["keys", "init"], ["lockdown", "on"]):
        result = env.run(*args)
        assert result.exit_code == 78, args
        assert str(env.config) in result.stderr
        assert "not a valid INI file" in result.stderr
    assert not env.db.exists()


def test_missing_config_file(env: Env) -> None:
    env.config.unlink()
    result = env.run("status")
    assert result.exit_code == 78
    assert str(env.config) in result.stderr


def test_unknown_config_key(env: Env) -> None:
    env.config.write_text("[controller]\nhook_timout = 5\n")
    result = env.run("list")
    assert result.exit_code == 78
    assert "hook_timout" in result.stderr


# -- known bugs ----------


def test_register_wait_zero_reports_the_state(env: Env) -> None:
    result = env.run(*register_args("198.18.0.5", "--wait", "0"))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "m-198-18-0-5: seen" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow", "--node", "nc1"], "--follow watches for nodes by --role/--cluster"),
        (["--converged-timeout", "5", "--role", "nc"], "only applies with --follow"),
        (["--follow", "--converged-timeout", "-1", "--role", "nc"], "-1"),
    ],
)
def test_exec_follow_usage_errors(env: Env, args: list[str], message: str) -> None:
    result = env.run("exec", *args, "--", "true")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
