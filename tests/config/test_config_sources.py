"""Configuration errors name where the value came from (file, environment, flag) and the rule.

The CLI passes flags as overrides whose source reads ``option for section.key``;
it turns those into the flag's name (tests/cli/test_admin_cli.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import registration._config as config_module
from registration._config import load_config
from registration._exceptions import ConfigError

ID_RULE = "must be 4-40 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"


@pytest.fixture(autouse=True)
def _no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the host's /etc/autoreg/autoreg.conf."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "autoreg.conf")


def error(path: Path | None = None, **overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, overrides=overrides)
    return info.value


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "autoreg.conf"
    path.write_text(text)
    return path


def test_a_role_given_as_an_option_is_blamed_on_the_option(tmp_path: Path) -> None:
    path = conf(tmp_path, "[node]\ncluster = foo\n")
    exc = error(path, **{"node.role": "walrsu"})
    assert exc.source == "option for node.role"
    assert "role 'walrsu' is not in profile 'eucalyptus' (roles: cc, clc, nc, sc, walrus)" in str(
        exc
    )


def test_a_role_from_the_file_is_blamed_on_the_file(tmp_path: Path) -> None:
    path = conf(tmp_path, "[node]\nrole = walrsu\n")
    assert error(path).source == f"{path} [node]"


def test_a_registrar_role_given_as_an_option_is_blamed_on_the_option() -> None:
    exc = error(**{"controller.role": "nc", "controller.cluster": "foo"})
    assert exc.source == "option for controller.role"
    assert "registers nothing" in str(exc)


@pytest.mark.parametrize("where", ["file", "option"])
def test_a_cluster_for_a_role_without_one_is_refused(tmp_path: Path, where: str) -> None:
    if where == "file":
        exc = error(conf(tmp_path, "[node]\nrole = walrus\ncluster = foo\n"))
        assert exc.source == f"{tmp_path / 'autoreg.conf'} [node]"
    else:
        exc = error(**{"node.role": "walrus", "node.cluster": "foo"})
        assert exc.source == "option for node.cluster"
    assert "role 'walrus' has no cluster in profile 'eucalyptus': drop cluster 'foo'" in str(exc)


def test_a_registrar_whose_node_has_a_cluster_is_still_fine(tmp_path: Path) -> None:
    """[controller] role = clc on a host whose [node] is a CC of cluster foo."""
    config = load_config(
        conf(tmp_path, "[node]\nrole = cc\ncluster = foo\n[controller]\nrole = clc\n"), env={}
    )
    assert (config.node.cluster, config.controller.role) == ("foo", "clc")


def test_a_bad_node_id_states_the_rule_and_its_source(tmp_path: Path) -> None:
    exc = error(**{"node.id": "sc1"})
    assert str(exc) == f"option for node.id: invalid value 'sc1': {ID_RULE}"
    path = conf(tmp_path, "[node]\nid = sc1\n")
    assert str(error(path)) == f"{path} [node]: id: invalid value 'sc1': {ID_RULE}"


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("name", "my_host", "1-63 characters of A-Z a-z 0-9 . -"),
        ("cluster", "f o", "1-63 characters of A-Z a-z 0-9 _ . -"),
    ],
)
def test_other_announced_fields_are_checked_as_the_codec_does(
    key: str, value: str, rule: str
) -> None:
    exc = error(**{f"node.{key}": value})
    assert exc.source == f"option for node.{key}"
    assert rule in str(exc)


def test_an_empty_autoreg_config_means_not_set() -> None:
    """`AUTOREG_CONFIG=` (empty) is the default path, not the current directory."""
    config = load_config(env={"AUTOREG_CONFIG": ""})
    assert config.path is None  # the (absent) default: defaults apply
