"""Bootstrap targets: the command line's ``[user@]host[:port]`` and the hosts file."""

from __future__ import annotations

from pathlib import Path

import pytest

from registration._exceptions import ConfigError
from registration.bootstrap import Target, parse_target, read_hosts_file


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("198.18.0.5", Target("198.18.0.5")),
        ("root@198.18.0.5:2222", Target("198.18.0.5", 2222, "root")),
        ("admin@nc-1.example", Target("nc-1.example", 22, "admin")),
        ("[2001:db8::5]:2200", Target("2001:db8::5", 2200)),
        ("2001:db8::5", Target("2001:db8::5")),
    ],
)
def test_targets_parse(text: str, want: Target) -> None:
    assert parse_target(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("root@", "neither an IP address nor a host name"),
        ("bad user@h", "not a user name"),
        ("h:0", "not a port number"),
        ("h:70000", "not a port number"),
        ("h:ssh", "not a port number"),
        ("[2001:db8::5", "[ADDRESS]:PORT"),
        ("host_with_underscore", "neither an IP address nor a host name"),
        ("a;rm -rf /", "neither an IP address nor a host name"),
    ],
)
def test_bad_targets_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_target(text)


def test_known_hosts_name_and_display() -> None:
    assert Target("h").key == "h"
    assert Target("h", 2222).key == "[h]:2222"
    assert str(Target("2001:db8::5", 2200, "root")) == "root@[2001:db8::5]:2200"


def test_hosts_file_lines_carry_role_and_cluster(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# machines\n198.18.0.5 nc c1  # rack 3\n\nroot@198.18.0.6:2222\n")
    assert read_hosts_file(hosts) == [
        Target("198.18.0.5", role="nc", cluster="c1"),
        Target("198.18.0.6", 2222, "root"),
    ]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"h nc c1 extra\n", r"hosts:1: want TARGET \[ROLE \[CLUSTER\]\]"),
        (b"ok\nh:99999\n", "hosts:2: .*not a port number"),
        (b"h N\xc3C\n", "not UTF-8"),
        (b"h nc bad.cluster!\n", "hosts:1: .*cluster"),
    ],
)
def test_a_bad_hosts_file_names_the_line(tmp_path: Path, content: bytes, says: str) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(content)
    with pytest.raises(ConfigError, match=says):
        read_hosts_file(hosts)


def test_a_missing_hosts_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?i)--hosts .*no such file"):
        read_hosts_file(tmp_path / "nope")
