"""The store keys of [autoreg]: store = sqlite | etcd and the etcd cluster's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

import registration._config as config_module
from registration._config import EtcdConfig, load_config
from registration._exceptions import ConfigError


@pytest.fixture(autouse=True)
def _no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "autoreg.conf")


def conf(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "autoreg.conf"
    path.write_text("[autoreg]\n" + body)
    return path


def error(path: Path, env: dict[str, str] | None = None, **overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, overrides=overrides or None)
    return str(info.value)


def test_sqlite_is_the_default_and_etcd_keys_are_typed(tmp_path: Path) -> None:
    assert load_config(env={}).store == "sqlite"
    assert load_config(env={}).etcd == EtcdConfig()
    path = conf(tmp_path, "store = etcd\n"
                "etcd_endpoints = https://198.18.1.1:2379, https://etcd2.example, "
                "https://[fd00::3]:2381\n"
                "etcd_ca = /etc/autoreg/etcd/ca.crt\netcd_cert = /etc/autoreg/etcd/c.crt\n"
                "etcd_key = /etc/autoreg/etcd/c.key\netcd_prefix = /site-a/autoreg/\n"
                "etcd_timeout = 2\netcd_lease_ttl = 20s\n")  # fmt: skip
    config = load_config(path, env={})
    assert config.store == "etcd"
    assert config.etcd == EtcdConfig(
        endpoints=("https://198.18.1.1:2379", "https://etcd2.example:2379",
                   "https://[fd00::3]:2381"),
        ca=Path("/etc/autoreg/etcd/ca.crt"), cert=Path("/etc/autoreg/etcd/c.crt"),
        key=Path("/etc/autoreg/etcd/c.key"), prefix="/site-a/autoreg/", timeout=2.0,
        lease_ttl=20.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("store = etcd\n", "store = etcd needs etcd_endpoints"),
        ("store = zookeeper\n", "want sqlite or etcd"),
        ("etcd_endpoints = etcd1:2379\n", "want a URL such as https://"),
        ("etcd_endpoints = https://etcd1:2379/v3\n", "no path"),
        ("etcd_endpoints = https://etcd1:99999\n", "must be 1-65535"),
        ("etcd_endpoints = https://ét.example\n", "no usable host name"),
        ("etcd_endpoints = https://a\netcd_cert = /c.crt\n", "etcd_cert without etcd_key"),
        ("etcd_endpoints = https://a\netcd_key = /c.key\n", "etcd_key without etcd_cert"),
        ("etcd_endpoints = http://a\netcd_ca = /ca.crt\n", "is plain http"),
        ("etcd_prefix = autoreg\n", "starts and ends with /"),
        ("etcd_prefix = /a b/\n", "no spaces"),
        ("etcd_lease_ttl = 5\n", "want 10 s to 1 h"),
        ("etcd_timeout = 0\n", "must be positive"),
        ("etcd_endpoint = https://a\n", "unknown key 'etcd_endpoint'"),
    ],
)
def test_bad_store_settings_are_named(tmp_path: Path, body: str, says: str) -> None:
    message = error(conf(tmp_path, body))
    assert says in message
    assert str(tmp_path / "autoreg.conf") in message


def test_environment_and_flags_choose_the_store(tmp_path: Path) -> None:
    path = conf(tmp_path, "etcd_endpoints = https://a:2379\n")
    env = {"AUTOREG_STORE": "etcd", "AUTOREG_ETCD_ENDPOINTS": "https://b:2379"}
    config = load_config(path, env=env)
    assert (config.store, config.etcd.endpoints) == ("etcd", ("https://b:2379",))
    flagged = load_config(path, env=env, overrides={"autoreg.etcd_endpoints": "https://c"})
    assert flagged.etcd.endpoints == ("https://c:2379",)
    assert "AUTOREG_STORE" in error(path, env={"AUTOREG_STORE": "redis"})
