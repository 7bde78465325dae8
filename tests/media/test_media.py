"""The AFTER_INSTALL script, run against fresh roots, and what media refuse to render.

The script runs in a fresh root (an empty directory entered with chroot in a
private mount namespace, see :mod:`support.firstboot`): inside it, as
``in-target`` runs it, and from an "installer" with the new system at
``/target``.  Both must leave exactly the same files, those files must be the
ones the seed's user-data writes (same content, same modes), and the units must
be enabled exactly as ``systemctl enable`` enables them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from medialab import Controller, tool

from registration._admin import build_medium, store_for
from registration._config import load_config
from registration._exceptions import ConfigError
from registration.media import Medium, check_request, render_script, render_seed
from registration.media._medium import _environment, _heredoc
from support.cloudinit import CloudInit, unavailable
from support.firstboot import make_fresh_root, run_after_install, tree

Prepare = Callable[..., Medium]
NETWORKD = "etc/systemd/network/20-autoreg-dhcp.network"
WANTS = "etc/systemd/system/multi-user.target.wants"


@pytest.fixture
def root_needed() -> None:
    if os.geteuid() != 0:
        unavailable("running the AFTER_INSTALL script in a fresh root needs root (chroot, mounts)")


@pytest.fixture
def prepare(controller: Controller) -> Prepare:
    """A medium as `autoreg media build` makes it (validated, allocated), in-process."""

    def _prepare(**kw: Any) -> Medium:
        config = load_config(controller.conf, env={})
        args: dict[str, Any] = {
            "cluster": None,
            "hostname": None,
            "node_id": None,
            "controller": "auto",
            "callback": False,
        }
        args.update(kw)
        request = check_request(config, **args)

        async def build() -> Medium:
            async with store_for(config) as store:
                return await build_medium(config, store, request, lambda medium: None)

        return asyncio.run(build())

    return _prepare


def install(
    medium: Medium, tmp: Path, name: str, *, target: bool = False, root: Path | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    script = tmp / f"{name}.sh"
    script.write_text(render_script(medium))
    root = root or make_fresh_root(tmp / name)
    result = run_after_install(script, root, target=target)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


CALLBACK = {"callback": True, "controller": "198.18.0.1"}


@pytest.mark.usefixtures("root_needed")
@pytest.mark.parametrize("calls_back", [False, True], ids=["direct", "callback"])
def test_script_installs_what_the_seed_writes(
    calls_back: bool, prepare: Prepare, tmp_path: Path
) -> None:
    medium = prepare(
        role="nc",
        cluster="foo",
        hostname="nc1",
        node_id="nc1-0001",
        **(CALLBACK if calls_back else {}),
    )
    inside, result = install(medium, tmp_path, "inside")
    from_installer, _ = install(medium, tmp_path, "installer", target=True)
    files = tree(inside)
    assert files == tree(from_installer)
    assert "after-install: done" in result.stdout

    user = yaml.safe_load(render_seed(medium)["user-data"])
    expected: dict[str, tuple[bytes, int]] = {
        f["path"].lstrip("/"): (f["content"].encode(), int(f["permissions"], 8))
        for f in user["write_files"]
    }
    (account,) = user["users"]
    keys = "".join(k + "\n" for k in account["ssh_authorized_keys"])
    expected["root/.ssh/authorized_keys"] = (keys.encode(), 0o600)
    expected["etc/hostname"] = (f"{user['hostname']}\n".encode(), 0o644)
    expected[NETWORKD] = (b"[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n", 0o644)
    regular = {p: (e.data, e.mode) for p, e in files.items() if e.kind == "f"}
    assert regular == expected
    assert all(e.uid == 0 for e in files.values())

    dirs = {p: e.mode for p, e in files.items() if e.kind == "d"}
    assert dirs["root"] == 0o700 and dirs["root/.ssh"] == 0o700
    assert dirs["etc/autoreg"] == 0o755 and dirs["etc/autoreg/autoreg.conf.d"] == 0o755
    # the keys directory holds the node's join token (and with --callback its key)
    assert dirs["etc/autoreg/keys"] == 0o700
    assert "/etc/autoreg/keys/join_token (mode 0600)" in result.stdout
    if calls_back:
        assert "/etc/autoreg/keys/callback_ed25519 (mode 0600)" in result.stdout
    assert {m for p, m in dirs.items() if p not in ("root", "root/.ssh", "etc/autoreg/keys")} == {
        0o755
    }
    # The units the seed's runcmd enables are the ones the script enables.
    units = [cmd[3] for cmd in user["runcmd"] if cmd[:3] == ["systemctl", "enable", "--now"]]
    assert sorted(n.rsplit("/", 1)[1] for n in files if n.startswith(f"{WANTS}/autoreg-")) == units
    assert list(medium.units) == units


@pytest.mark.usefixtures("root_needed")
def test_units_are_enabled_as_systemctl_enables_them(prepare: Prepare, tmp_path: Path) -> None:
    systemctl = tool("systemctl", "systemd")
    medium = prepare(role="walrus", **CALLBACK)
    root, _ = install(medium, tmp_path, "root")
    links = {p: e.target for p, e in tree(root).items() if e.kind == "l"}

    # systemctl --root enabling the same units in a scratch root holding their unit files.
    scratch = make_fresh_root(tmp_path / "scratch")
    units_dir = scratch / "usr/lib/systemd/system"
    units_dir.mkdir(parents=True)
    networkd = [
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-networkd-wait-online.service",
        "systemd-network-generator.service",
    ]
    for name in networkd:
        shutil.copy(Path("/lib/systemd/system") / name, units_dir)
    repo_units = Path(__file__).resolve().parents[2] / "systemd"
    for name in medium.units:
        shutil.copy(repo_units / name, units_dir)
    enable = [systemctl, f"--root={scratch}", "enable", "systemd-networkd.service", *medium.units]
    subprocess.run(enable, check=True, capture_output=True, timeout=30)
    expected = {p: e.target for p, e in tree(scratch).items() if e.kind == "l"}
    assert links == expected

    # And systemd calls them enabled in the installed root once the package is there.
    shutil.copytree(scratch / "usr/lib", root / "usr/lib")
    for unit in ("systemd-networkd.service", *medium.units):
        out = subprocess.run(
            [systemctl, f"--root={root}", "is-enabled", unit],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.stdout.strip() == "enabled", (unit, out.stdout, out.stderr)


@pytest.mark.usefixtures("root_needed")
def test_script_twice_changes_nothing_and_keeps_other_keys(
    prepare: Prepare, tmp_path: Path
) -> None:
    medium = prepare(role="walrus", **CALLBACK)
    root = make_fresh_root(tmp_path / "root")
    ssh = root / "root/.ssh"
    ssh.mkdir(parents=True, mode=0o755)
    (root / "root").chmod(0o700)
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7okWi0dh2l6GKJl admin"
    (ssh / "authorized_keys").write_text(other + "\n")
    (ssh / "authorized_keys").chmod(0o644)
    install(medium, tmp_path, "once", root=root)
    first = tree(root)
    install(medium, tmp_path, "twice", root=root)
    assert tree(root) == first
    lines = (ssh / "authorized_keys").read_text().splitlines()
    assert lines == [other, medium.controller_public_key]
    assert first["root/.ssh"].mode == 0o700 and first["root/.ssh/authorized_keys"].mode == 0o600


NETWORK_ELSEWHERE = {
    "ifupdown": (
        "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet dhcp\n",
        "ifupdown (/etc/network/interfaces)",
    ),
    "netplan": (
        "etc/netplan/01-netcfg.yaml",
        "network: {version: 2, ethernets: {ens3: {dhcp4: true}}}\n",
        "netplan (/etc/netplan/01-netcfg.yaml)",
    ),
}


@pytest.mark.usefixtures("root_needed")
@pytest.mark.parametrize("kind", [*NETWORK_ELSEWHERE, "ifupdown-lo-only"])
def test_an_installed_network_configuration_is_kept(
    kind: str, prepare: Prepare, tmp_path: Path
) -> None:
    medium = prepare(role="walrus")
    root = make_fresh_root(tmp_path / "root")
    if kind == "ifupdown-lo-only":  # an installer without network wrote only lo
        path, text, said = "etc/network/interfaces", "auto lo\niface lo inet loopback\n", None
    else:
        path, text, said = NETWORK_ELSEWHERE[kind]
    (root / path).parent.mkdir(parents=True)
    (root / path).write_text(text)
    _, result = install(medium, tmp_path, "x", root=root)
    files = tree(root)
    if said is None:
        assert NETWORKD in files and f"{WANTS}/systemd-networkd.service" in files
    else:
        assert f"after-install: kept the installed network configuration: {said}" in result.stdout
        assert NETWORKD not in files
        assert not [p for p in files if "networkd" in p or "network1" in p]
    assert f"{WANTS}/autoreg-announce.service" in files


@pytest.mark.usefixtures("root_needed")
def test_a_missing_target_is_refused_before_anything_is_written(
    prepare: Prepare, tmp_path: Path
) -> None:
    script = tmp_path / "s.sh"
    script.write_text(render_script(prepare(role="walrus")))
    root = make_fresh_root(tmp_path / "root")
    result = run_after_install(script, root, env=["TARGET=/mnt/new-system"])
    assert result.returncode == 1
    assert "TARGET=/mnt/new-system is not a directory" in result.stderr
    assert tree(root) == {}


@pytest.mark.usefixtures("root_needed")
def test_another_controller_user_gets_the_key_and_owns_it(
    controller: Controller, prepare: Prepare, tmp_path: Path, cloud_init: CloudInit
) -> None:
    with controller.conf.open("a") as fh:
        fh.write("ssh_user = autoreg\n")  # appended to [controller]
    medium = prepare(role="walrus")
    seed = render_seed(medium)
    user = yaml.safe_load(seed["user-data"])
    assert user["users"] == [
        {
            "name": "autoreg",
            "lock_passwd": True,
            "shell": "/bin/sh",
            "ssh_authorized_keys": [controller.public_key],
        }
    ]
    (tmp_path / "user-data").write_bytes(seed["user-data"])
    assert cloud_init.schema(tmp_path / "user-data").returncode == 0

    script = tmp_path / "s.sh"
    script.write_text(render_script(medium))
    bare = make_fresh_root(tmp_path / "bare")
    refused = run_after_install(script, bare)
    assert refused.returncode == 1
    assert "cannot give /home/autoreg/.ssh to autoreg: create the user first" in refused.stderr

    root = make_fresh_root(tmp_path / "root")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nautoreg:x:990:990::/home/autoreg:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nautoreg:x:990:\n")
    for target in (False, True):
        result = run_after_install(script, root, target=target)
        assert result.returncode == 0, result.stderr
        keys = root / "home/autoreg/.ssh/authorized_keys"
        assert keys.read_text() == controller.public_key + "\n"
        st = keys.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (990, 990, 0o600)
        assert (root / "home/autoreg/.ssh").stat().st_uid == 990


def test_rendered_script_passes_shellcheck(prepare: Prepare, tmp_path: Path) -> None:
    shellcheck = tool("shellcheck", "shellcheck")
    for name, kw in (("direct", {}), ("callback", CALLBACK)):
        script = tmp_path / f"{name}.sh"
        script.write_text(render_script(prepare(role="walrus", **kw)))
        out = subprocess.run(
            [shellcheck, "-s", "sh", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout


def test_templates_refuse_undefined_values() -> None:
    env = _environment()
    with pytest.raises(jinja2.UndefinedError, match="'node' is undefined"):
        env.get_template("user-data.j2").render({})
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("meta-data.j2").render({"instance_id": "x"})  # node missing
    with pytest.raises(ConfigError, match="holds a line 'AUTOREG_EOF'"):
        _heredoc("a\nAUTOREG_EOF\nb\n")
    assert _heredoc("no newline") == "no newline\n"


REFUSED = [
    (["--role", "mayor"], 78, "unknown role 'mayor'; roles: cc, clc, nc, sc, walrus"),
    (["--role", "nc"], 78, "role nc belongs to a cluster: give --cluster"),
    (
        ["--role", "walrus", "--cluster", "foo"],
        78,
        "role walrus has no cluster: drop --cluster foo",
    ),
    (["--role", "walrus", "--node-id", "x"], 78, "--node-id: invalid value 'x'"),
    (["--role", "walrus", "--hostname", "a b"], 78, "--hostname: invalid value 'a b'"),
    (["--role", "walrus", "--callback"], 78, "a node that calls back needs --controller ADDRESS"),
    (
        ["--role", "walrus", "--controller", "198.18.0.1"],
        78,
        "--controller only matters for a node that calls back: add --callback",
    ),
    (
        ["--role", "walrus", "--callback", "--controller", "a;b\nAUTOREG_EOF"],
        78,
        "is neither an IP address nor a host name",
    ),
    (["--role", "walrus", "--interface", "eth0/x"], 78, "--interface 'eth0/x' is not an"),
    (["--role", "walrus", "--package", "Foo Bar"], 78, "--package 'Foo Bar' is not a Debian"),
]


@pytest.mark.parametrize(("args", "code", "message"), REFUSED)
def test_media_refuses_with_a_specific_message(
    args: list[str], code: int, message: str, controller: Controller, tmp_path: Path
) -> None:
    result = controller.run("media", "script", *args, check=False)
    assert result.returncode == code
    assert message in result.stderr
    assert result.stdout == ""
    assert not controller.callback_keys.exists()  # nothing allocated


def test_media_without_controller_key_says_how_to_make_one(
    controller: Controller, tmp_path: Path
) -> None:
    for path in controller.keys.iterdir():
        path.unlink()
    result = controller.run(
        "media", "build", "--role", "walrus", "-o", str(tmp_path / "s.iso"), check=False
    )
    assert result.returncode == 73
    assert "create it with `autoreg keys init`" in result.stderr
    assert not (tmp_path / "s.iso").exists()


def test_script_output_is_private_and_replaces_a_loose_file(
    controller: Controller, tmp_path: Path
) -> None:
    out = tmp_path / "after-install.sh"
    out.write_text("old")
    out.chmod(0o644)
    args = ["--role", "walrus", "--callback", "--controller", "ctl.example.org"]
    result = controller.run("media", "script", *args, "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert out.read_text().startswith("#!/bin/sh\n")
    assert "controller = ctl.example.org" in out.read_text()
    assert "this node's own CALLBACK_KEY" in result.stderr
    assert "a single-use join token" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after-install.sh", "controller"]
    to_stdout = controller.run("media", "script", "--role", "walrus")
    assert to_stdout.stdout.startswith("#!/bin/sh\n# autoreg AFTER_INSTALL script for walrus")
