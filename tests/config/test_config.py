"""Configuration loading (registration/_config.py): defaults, errors, precedence, checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import registration._config as config_module
from registration._config import Config, ControllerConfig, NodeConfig, load_config
from registration._exceptions import ConfigError


@pytest.fixture(autouse=True)
def _no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the host's /etc/autoreg/autoreg.conf."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "autoreg.conf")


def write(tmp_path: Path, text: str, name: str = "autoreg.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path | None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=kwargs.pop("env", {}), **kwargs)  # type: ignore[arg-type]
    assert info.value.exit_code == 78
    return str(info.value)


# -- defaults ----------


def test_defaults_when_the_default_file_is_absent() -> None:
    config = load_config(env={})
    assert config.path is None
    assert config.state_dir == Path("/var/lib/autoreg")
    assert config.keys_dir == Path("/etc/autoreg/keys")
    assert config.log_level == "info"
    assert config.interfaces == ()
    assert config.profile.name == "eucalyptus"
    assert config.node == NodeConfig()
    assert config.controller == ControllerConfig()
    assert config.db_path == Path("/var/lib/autoreg/autoreg.db")
    assert config.controller_key == Path("/etc/autoreg/keys/controller_ed25519")


def test_default_path_is_read_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nlog_level = debug\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    config = load_config(env={})
    assert config.path == path
    assert config.log_level == "debug"


def test_autoreg_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nlog_level = warning\n")
    config = load_config(env={"AUTOREG_CONFIG": str(path)})
    assert config.path == path
    assert config.log_level == "warning"


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[autoreg]\n"
        "state_dir = /srv/state\n"
        "interfaces = eth0, eth1 br0\n"
        "log_level = ERROR\n"
        "[node]\n"
        "role = nc\n"
        "cluster = foo\n"
        "ssh_port = 2222   # inline comments are allowed\n"
        "poll_interval = 0.5s\n"
        "probe = yes\n"
        "registered_when =\n"
        "[controller]\n"
        "role = cc\n"
        "hook_timeout = 30\n"
        "max_attempts = 3\n"
        "announce_self = off\n",
    )
    config = load_config(path, env={})
    assert config.state_dir == Path("/srv/state")
    assert config.interfaces == ("eth0", "eth1", "br0")
    assert config.log_level == "error"
    assert config.node.ssh_port == 2222
    assert config.node.poll_interval == 0.5
    assert config.node.probe is True
    assert config.node.registered_when is None
    assert config.controller.role == "cc"
    # a CC controller without its own cluster inherits the node's cluster for the check
    assert config.controller.cluster is None
    assert config.controller.hook_timeout == 30.0
    assert config.controller.max_attempts == 3
    assert config.controller.announce_self is False


# -- file errors ----------


def test_explicit_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    message = load_error(missing)
    assert str(missing) in message
    assert "cannot read" in message


def test_missing_file_named_by_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    message = load_error(None, env={"AUTOREG_CONFIG": str(missing)})
    assert str(missing) in message


def test_unknown_section(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[daemon]\nrole = clc\n"))
    assert "unknown section [daemon]" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[controller]\nhook_timout = 3\n"))
    assert "unknown key 'hook_timout'" in message
    assert "[controller]" in message


@pytest.mark.parametrize(
    "text",
    [
        "state_dir = /x\n",  # no section header
        "[autoreg\nstate_dir = /x\n",
        "[autoreg]\nstate_dir = /x\n[autoreg]\nlog_level = info\n",  # duplicate section
        "[autoreg]\nlog_level = info\nlog_level = debug\n",  # duplicate key
    ],
)
def test_corrupt_ini(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert str(path) in message
    assert "not a valid INI file" in message


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "autoreg.conf"
    path.write_bytes(b"\xff\xfe[\x00a\x00")
    assert str(path) in load_error(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read" in load_error(tmp_path)


# -- bad values ----------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("node", "ssh_port", "0"),
        ("node", "ssh_port", "70000"),
        ("node", "ssh_port", "ssh"),
        ("node", "poll_interval", "soon"),
        ("node", "poll_interval", "0"),
        ("node", "poll_interval", "-1"),
        ("controller", "hook_timeout", "nan"),
        ("node", "probe", "maybe"),
        ("controller", "resume_interrupted", "2"),
        ("autoreg", "log_level", "verbose"),
        ("controller", "max_attempts", "0"),
        ("controller", "max_parallel", "1.5"),
    ],
)
def test_bad_values(tmp_path: Path, section: str, key: str, value: str) -> None:
    message = load_error(write(tmp_path, f"[{section}]\n{key} = {value}\n"))
    assert f"{key} = {value!r}" in message
    assert f"[{section}]" in message


def test_retry_initial_above_retry_max(tmp_path: Path) -> None:
    path = write(tmp_path, "[controller]\nretry_initial = 60\nretry_max = 10\n")
    assert "retry_initial is larger than retry_max" in load_error(path)


def test_unknown_profile(tmp_path: Path) -> None:
    assert "unknown profile 'k8s'" in load_error(write(tmp_path, "[autoreg]\nprofile = k8s\n"))


# -- precedence ----------


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nstate_dir = /from/file\nlog_level = warning\n")
    env = {"AUTOREG_STATE_DIR": "/from/env", "AUTOREG_KEYS_DIR": "/keys/env"}
    assert load_config(path, env={}).state_dir == Path("/from/file")
    assert load_config(path, env=env).state_dir == Path("/from/env")
    config = load_config(path, env=env, overrides={"autoreg.state_dir": "/from/cli"})
    assert config.state_dir == Path("/from/cli")
    assert config.keys_dir == Path("/keys/env")
    assert config.log_level == "warning"  # only in the file
    assert config.controller.hook_timeout == 300.0  # nowhere: the default


def test_override_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nstate_dir = /from/file\n")
    config = load_config(
        path, env={"AUTOREG_STATE_DIR": "/from/env"}, overrides={"autoreg.state_dir": None}
    )
    assert config.state_dir == Path("/from/env")


def test_empty_environment_variable_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nstate_dir = /from/file\n")
    assert load_config(path, env={"AUTOREG_STATE_DIR": ""}).state_dir == Path("/from/file")


def test_environment_values_are_validated() -> None:
    message = load_error(None, env={"AUTOREG_LOG_LEVEL": "chatty"})
    assert "log_level = 'chatty'" in message


def test_unknown_override_key() -> None:
    message = load_error(None, overrides={"autoreg.colour": "yes"})
    assert "unknown key 'colour'" in message


def test_hooks_dir_from_environment() -> None:
    config = load_config(env={"AUTOREG_HOOKS_DIR": "/opt/hooks"})
    assert config.controller.hooks_dir == Path("/opt/hooks")


# -- [role:x] sections in the main file ----------


def test_role_override_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[role:nc]\ncluster = yes\nregistered_by = cc\nunique = cluster\n"
        "[role:osg]\nregistered_by = clc\n",
    )
    config = load_config(path, env={})
    nc = config.profile.role("nc")
    assert nc is not None
    assert nc.unique == "cluster"
    assert config.profile.roles_registered_by("clc") == ("walrus", "cc", "sc", "osg")


def test_role_override_can_make_a_new_registrar(tmp_path: Path) -> None:
    path = write(tmp_path, "[role:osg]\nregistered_by = walrus\n[controller]\nrole = walrus\n")
    assert load_config(path, env={}).controller.role == "walrus"


def test_role_override_section_is_validated(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[role:nc]\nregistered_by = ghost\n"))
    assert "unknown role 'ghost'" in message


# -- cross checks ----------


def test_node_role_not_in_profile(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[node]\nrole = web\n"))
    assert "role 'web' is not in profile 'eucalyptus'" in message
    assert "[node]" in message


def test_controller_role_not_in_profile(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[controller]\nrole = web\n"))
    assert "[controller]" in message
    assert "'web'" in message


def test_node_role_with_cluster_but_no_cluster(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[node]\nrole = nc\n"))
    assert "belongs to a cluster: set cluster" in message


def test_controller_cluster_role_without_cluster(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[controller]\nrole = cc\n"))
    assert "belongs to a cluster" in message


def test_controller_cluster_taken_from_node(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nrole = cc\ncluster = foo\n[controller]\nrole = cc\n")
    config = load_config(path, env={})
    assert config.controller.role == "cc"


@pytest.mark.parametrize("role", ["walrus", "nc"])
def test_controller_role_that_registers_nothing(tmp_path: Path, role: str) -> None:
    path = write(tmp_path, f"[controller]\nrole = {role}\ncluster = foo\n")
    message = load_error(path)
    assert f"role {role!r} registers nothing" in message
    assert "registrar roles: cc, clc" in message


def test_controller_role_from_override() -> None:
    message = load_error(None, overrides={"controller.role": "sc", "controller.cluster": "foo"})
    assert "registers nothing" in message


# -- immutability ----------


def test_config_objects_are_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.state_dir = Path("/tmp")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.ssh_port = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.controller.role = "clc"  # type: ignore[misc]
    assert isinstance(config, Config)


# -- known bugs ----------


def test_bad_role_override_names_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[role:nc]\nregistred_by = cc\n")
    message = load_error(path)
    assert "registred_by" in message
    assert str(path) in message


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[autoreg]\nlog_level = info\n")
    message = load_error(path, env={"AUTOREG_LOG_LEVEL": "chatty"})
    assert "AUTOREG_LOG_LEVEL" in message


# -- proxies: checked with the protocol's own validators ----------

PROXY_FP = "SHA256:" + "B" * 43


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("", "proxy_fingerprint: invalid value '': must be SHA256: followed by 43"),
        ("proxy_fingerprint = SHA256:short", "proxy_fingerprint: invalid value 'SHA256:short'"),
        (
            f"proxy_fingerprint = {PROXY_FP}\nproxy_key_type = ssh-dss",
            "proxy_key_type: invalid value 'ssh-dss': must be one of ssh-ed25519,",
        ),
        (f"proxy_fingerprint = {PROXY_FP}\nproxy_port = 0", "proxy_port: must be 1-65535"),
    ],
)
def test_proxy_section_states_the_rule(tmp_path: Path, lines: str, expected: str) -> None:
    message = load_error(write(tmp_path, f"[cluster:foo]\nproxy = 10.0.0.9\n{lines}\n"))
    assert expected in message
    assert "[cluster:foo]" in message


def test_proxy_section_accepts_every_protocol_key_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"[cluster:foo]\nproxy = 10.0.0.9\nproxy_fingerprint = {PROXY_FP}\n"
        "proxy_key_type = ecdsa-sha2-nistp384\nproxy_port = 2222\n",
    )
    proxy = load_config(path, env={}).proxy_for("foo")
    assert proxy is not None
    assert (proxy.key_type, proxy.port, proxy.fingerprint) == (
        "ecdsa-sha2-nistp384",
        2222,
        PROXY_FP,
    )
