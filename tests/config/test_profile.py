"""Role profiles (registration/_profile.py): the shipped one and strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from registration._exceptions import ConfigError
from registration._profile import (
    SHIPPED_PROFILES,
    Profile,
    RoleSpec,
    load_profile,
    parse_role_sections,
)


def parse(sections: dict[str, dict[str, str]]) -> Profile:
    return parse_role_sections("test", sections, source="test.conf")


def parse_error(sections: dict[str, dict[str, str]]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(sections)
    return str(info.value)


# -- the shipped eucalyptus profile ----------


def test_eucalyptus_is_shipped() -> None:
    assert "eucalyptus" in SHIPPED_PROFILES


def test_eucalyptus_roles() -> None:
    profile = load_profile("eucalyptus")
    assert profile.name == "eucalyptus"
    assert set(profile.roles) == {"clc", "walrus", "cc", "sc", "nc"}
    assert profile.role("clc") == RoleSpec(name="clc")
    assert profile.role("walrus") == RoleSpec(
        name="walrus", has_cluster=False, registered_by="clc", unique="cloud"
    )
    assert profile.role("cc") == RoleSpec(
        name="cc", has_cluster=True, registered_by="clc", unique="cluster"
    )
    assert profile.role("sc") == RoleSpec(
        name="sc", has_cluster=True, registered_by="clc", unique="cluster", requires=("cc",)
    )
    assert profile.role("nc") == RoleSpec(
        name="nc", has_cluster=True, registered_by="cc", unique="none"
    )
    assert profile.role("bogus") is None


def test_eucalyptus_registrars() -> None:
    profile = load_profile("eucalyptus")
    assert sorted(profile.roles_registered_by("clc")) == ["cc", "sc", "walrus"]
    assert profile.roles_registered_by("cc") == ("nc",)
    assert profile.roles_registered_by("nc") == ()
    assert profile.registrar_roles() == ("cc", "clc")


def test_overrides_replace_a_whole_section_and_add_roles() -> None:
    profile = load_profile(
        "eucalyptus",
        {
            "role:nc": {"cluster": "yes", "registered_by": "clc"},
            "role:osg": {"registered_by": "clc", "unique": "cloud"},
        },
    )
    assert profile.role("nc") == RoleSpec(name="nc", has_cluster=True, registered_by="clc")
    assert profile.role("osg") == RoleSpec(name="osg", registered_by="clc", unique="cloud")
    assert profile.roles_registered_by("cc") == ()


# -- loading ----------


def test_unknown_profile_name() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'openstack'"):
        load_profile("openstack")


def test_profile_from_path(tmp_path: Path) -> None:
    path = tmp_path / "mini.conf"
    path.write_text("[role:head]\n\n[role:worker]\nregistered_by = head\nunique = none\n")
    profile = load_profile(str(path))
    assert profile.roles_registered_by("head") == ("worker",)


def test_profile_path_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load_profile(str(missing))
    assert str(missing) in str(info.value)


def test_profile_with_a_non_role_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[autoreg]\nstate_dir = /x\n")
    with pytest.raises(ConfigError, match=r"unexpected section \[autoreg\]"):
        load_profile(str(path))


def test_profile_not_ini(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("registered_by = clc\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert str(path) in str(info.value)


# -- validation ----------


def test_unknown_key() -> None:
    message = parse_error({"role:clc": {}, "role:nc": {"registerd_by": "clc"}})
    assert "registerd_by" in message
    assert "[role:nc]" in message


def test_registered_by_unknown_role() -> None:
    message = parse_error({"role:clc": {}, "role:nc": {"registered_by": "cc"}})
    assert "unknown role 'cc'" in message


def test_requires_unknown_role() -> None:
    message = parse_error({"role:clc": {}, "role:sc": {"registered_by": "clc", "requires": "cc"}})
    assert "requires names unknown role 'cc'" in message


def test_self_registration() -> None:
    message = parse_error({"role:clc": {"registered_by": "clc"}})
    assert "cannot register itself" in message


def test_requires_itself() -> None:
    message = parse_error({"role:clc": {}, "role:sc": {"registered_by": "clc", "requires": "sc"}})
    assert "cannot require itself" in message


def test_registered_by_cycle() -> None:
    message = parse_error(
        {
            "role:a": {"registered_by": "c"},
            "role:b": {"registered_by": "a"},
            "role:c": {"registered_by": "b"},
        }
    )
    assert "cycle" in message


def test_unique_cluster_needs_cluster() -> None:
    message = parse_error(
        {"role:clc": {}, "role:cc": {"registered_by": "clc", "unique": "cluster"}}
    )
    assert "unique = cluster needs cluster = yes" in message


@pytest.mark.parametrize("value", ["maybe", "2", "y e s"])
def test_bad_bool(value: str) -> None:
    message = parse_error({"role:clc": {}, "role:cc": {"registered_by": "clc", "cluster": value}})
    assert "want yes or no" in message


@pytest.mark.parametrize(("value", "expected"), [("yes", True), ("On", True), ("0", False)])
def test_bools(value: str, expected: bool) -> None:
    profile = parse({"role:clc": {}, "role:cc": {"registered_by": "clc", "cluster": value}})
    spec = profile.role("cc")
    assert spec is not None
    assert spec.has_cluster is expected


def test_bad_unique() -> None:
    message = parse_error({"role:clc": {}, "role:cc": {"registered_by": "clc", "unique": "host"}})
    assert "want cloud, cluster or none" in message


@pytest.mark.parametrize("name", ["NC", "1nc", "n_c", "a" * 17, ""])
def test_bad_role_name(name: str) -> None:
    message = parse_error({f"role:{name}": {}})
    assert "invalid role name" in message


def test_empty_profile() -> None:
    assert "defines no roles" in parse_error({})


def test_requires_list_splits_on_commas_and_spaces() -> None:
    profile = parse(
        {
            "role:clc": {},
            "role:a": {"registered_by": "clc"},
            "role:b": {"registered_by": "clc"},
            "role:c": {"registered_by": "clc", "requires": "a, b"},
            "role:d": {"registered_by": "clc", "requires": " a  b ,"},
        }
    )
    assert profile.roles["c"].requires == ("a", "b")
    assert profile.roles["d"].requires == ("a", "b")


def test_profile_is_frozen() -> None:
    spec = load_profile("eucalyptus").roles["nc"]
    with pytest.raises(AttributeError):
        spec.registered_by = "clc"  # type: ignore[misc]


def test_requires_cycle_rejected() -> None:
    message = parse_error(
        {
            "role:clc": {},
            "role:cc": {"registered_by": "clc", "requires": "sc"},
            "role:sc": {"registered_by": "clc", "requires": "cc"},
        }
    )
    assert "cycle" in message
