"""`autoreg media build` and `media inspect`, checked by readers that are not autoreg's.

Every built image is read back with xorriso, with isoinfo (both its Rock Ridge
and its Joliet view) and with blkid (the label udev and cloud-init's NoCloud
search see); the three must agree byte for byte.  The user-data must pass
cloud-init's own schema validator, the network-config cloud-init's own network
renderers, the callback key ``ssh-keygen``, and the node's configuration
autoreg's own loader.  ``media inspect`` is fed seeds written by genisoimage,
broken in the ways people break them, and must name each problem.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from medialab import Controller

from registration._config import load_config
from support.cloudinit import CloudInit

SEED = {"user-data", "meta-data"}


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, **kw)


def xorriso_read(xorriso: str, iso: Path, out: Path) -> tuple[str, dict[str, bytes]]:
    """Volume id and root files, as xorriso sees them (Rock Ridge names)."""
    info = run([xorriso, "-indev", str(iso), "-pvd_info"]).stdout
    (label,) = re.findall(r"^Volume Id\s*:\s*(\S*)", info, re.MULTILINE)
    listing = run([xorriso, "-indev", str(iso), "-find", "/", "-type", "f"]).stdout
    names = [line.strip("'").lstrip("/") for line in listing.split() if line.startswith("'/")]
    run([xorriso, "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
    files = {name: (out / name).read_bytes() for name in names}
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    return label, files


def isoinfo_read(isoinfo: str, iso: Path, view: str) -> dict[str, bytes]:
    """Root files through isoinfo's ``view`` ("-R": Rock Ridge, "-J": Joliet)."""
    listing = run([isoinfo, "-f", view, "-i", str(iso)]).stdout.split()
    return {
        name.lstrip("/"): subprocess.run(
            [isoinfo, view, "-x", name, "-i", str(iso)],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        for name in listing
    }


def read_back(iso: Path, tmp: Path, xorriso: str, isoinfo: str) -> dict[str, bytes]:
    """The seed's files, after checking that every reader sees the same seed."""
    label, files = xorriso_read(xorriso, iso, tmp / "xorriso")
    assert label == "cidata"
    header = run([isoinfo, "-d", "-i", str(iso)]).stdout
    assert re.search(r"^Volume id: cidata$", header, re.MULTILINE), header
    assert "Rock Ridge signatures" in header and "Joliet with UCS level 3" in header
    assert isoinfo_read(isoinfo, iso, "-R") == files
    assert isoinfo_read(isoinfo, iso, "-J") == files
    blkid = run(["blkid", "-p", "-o", "export", str(iso)]).stdout
    assert "LABEL=cidata" in blkid.split() and "TYPE=iso9660" in blkid.split(), blkid
    return files


def autoreg_conf(user: dict[str, Any]) -> tuple[str, str]:
    (entry,) = [f for f in user["write_files"] if f["path"].startswith("/etc/autoreg/autoreg.conf")]
    return entry["path"], entry["content"]


CASES = {
    "walrus": ["--role", "walrus", "--hostname", "walrus1", "--node-id", "walrus-0001"],
    "nc-callback": [
        *("--role", "nc", "--cluster", "foo", "--node-id", "nc-0001"),
        *("--callback", "--controller", "198.18.0.1"),
    ],
    "cc-interface": [
        *("--role", "cc", "--cluster", "bar", "--node-id", "cc-0001", "--hostname", "cc.example"),
        *("--interface", "ens3", "--package", "autoreg", "--package", "openssh-server"),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_built_seed_reads_back_everywhere_and_carries_the_node(
    case: str,
    controller: Controller,
    tmp_path: Path,
    xorriso: str,
    isoinfo: str,
    cloud_init: CloudInit,
) -> None:
    args = CASES[case]
    iso = tmp_path / "seed.iso"
    out = controller.run("media", "build", *args, "-o", str(iso)).stdout
    assert iso.stat().st_mode & 0o777 == 0o600
    files = read_back(iso, tmp_path, xorriso, isoinfo)
    interface = "--interface" in args
    assert set(files) == SEED | ({"network-config"} if interface else set())

    # user-data: cloud-init's own validator accepts it.
    (tmp_path / "user-data").write_bytes(files["user-data"])
    checked = cloud_init.schema(tmp_path / "user-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout
    assert files["user-data"].startswith(b"#cloud-config\n")
    user = yaml.safe_load(files["user-data"])
    meta = yaml.safe_load(files["meta-data"])

    node_id = args[args.index("--node-id") + 1]
    hostname = args[args.index("--hostname") + 1] if "--hostname" in args else None
    assert f"(node {node_id})" in out
    assert meta["instance-id"] == f"autoreg-{node_id}"
    assert meta["local-hostname"] == user["hostname"] == (hostname or user["hostname"])
    # CONTROLLER_KEY authorised for CONTROLLER_USER (root), root's password untouched.
    (root,) = user["users"]
    assert root["name"] == "root" and root["lock_passwd"] is False
    assert root["ssh_authorized_keys"] == [controller.public_key]
    assert user["disable_root"] is False and user["ssh_pwauth"] is False

    # The node's autoreg configuration, as autoreg's own loader reads it.
    path, text = autoreg_conf(user)
    assert path == "/etc/autoreg/autoreg.conf.d/50-medium.conf"
    dropin = tmp_path / "etc/autoreg.conf.d/50-medium.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(text)
    (tmp_path / "etc/autoreg.conf").write_text("")  # the admin's (here: empty) main file
    config = load_config(tmp_path / "etc/autoreg.conf", env={})
    role = args[args.index("--role") + 1]
    cluster = args[args.index("--cluster") + 1] if "--cluster" in args else None
    assert (config.node.role, config.node.cluster, config.node.node_id) == (role, cluster, node_id)
    assert config.transport == "auto"
    written = {f["path"]: f for f in user["write_files"]}

    units = [cmd[3] for cmd in user["runcmd"] if cmd[:3] == ["systemctl", "enable", "--now"]]
    # A single-use join token for exactly this role and cluster: zero-touch under
    # trust = token, and gone from the node once it is registered (token_file).
    assert "secrets: a single-use join token" in out
    assert config.node.token_file == Path("/etc/autoreg/keys/join_token")
    token = written["/etc/autoreg/keys/join_token"]
    assert token["permissions"] == "0600"
    token_id = token["content"].strip().split(".")[0]
    (listed,) = [t for t in controller.json("token", "list", "--json") if t["id"] == token_id]
    assert (listed["roles"], listed["cluster"], listed["uses"]) == ([role], cluster, 1)
    assert token["content"].strip() not in json.dumps(listed)  # never the secret
    if "--callback" in args:
        assert "this node's own CALLBACK_KEY" in out
        assert units == ["autoreg-announce.service", "autoreg-callback.service"]
        check_callback(controller, config, written, node_id, tmp_path)
    else:
        assert "CALLBACK_KEY" not in out
        assert units == ["autoreg-announce.service"]
        assert not any("PRIVATE KEY" in f["content"] for f in written.values())
        assert config.callback.listen_ports == ()
    packages = [args[i + 1] for i, a in enumerate(args) if a == "--package"]
    assert user.get("packages", []) == packages
    if interface:
        check_network_config(cloud_init, files["network-config"], tmp_path)

    # And autoreg's own reader agrees.
    report = controller.json("media", "inspect", "--json", str(iso))
    assert report["ok"] and report["problems"] == []
    assert (report["autoreg_role"], report["node_id"]) == (role, node_id)
    assert report["calls_back"] is ("--callback" in args)
    assert "/etc/autoreg/keys/join_token" in report["secrets"]
    assert report["files"] == {name: len(data) for name, data in files.items()}


def check_callback(
    controller: Controller,
    config: Any,
    written: dict[str, Any],
    node_id: str,
    tmp: Path,
) -> None:
    """The callback key is this node's, authorised on the controller for its ports only."""
    cb = config.callback
    assert (cb.controller, cb.port, cb.user) == ("198.18.0.1", 2222, "autoreg-callback")
    key = written[str(cb.key)]
    assert key["permissions"] == "0600" and key["owner"] == "root:root"
    assert key["content"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    private = tmp / "callback_key"
    private.write_text(key["content"])
    private.chmod(0o600)
    public = run(["ssh-keygen", "-y", "-f", str(private)]).stdout.split()
    assert public[0] == "ssh-ed25519"
    (line,) = [ln for ln in controller.callback_keys.read_text().splitlines() if public[1] in ln]
    listen = ",".join(f'permitlisten="127.0.0.1:{p}"' for p in cb.listen_ports)
    assert line.startswith(f"restrict,port-forwarding,{listen},command=")
    assert line.endswith(f"autoreg-callback:{node_id}")
    assert all(21000 <= p <= 21099 for p in cb.listen_ports) and len(cb.listen_ports) == 2
    # The controller's host-key pin is the one `tunnel known-hosts` prints.
    pin = written[str(cb.known_hosts)]
    assert pin["content"] == controller.run("tunnel", "known-hosts").stdout
    assert controller.sshd_host_key.with_suffix(".pub").read_text().split()[1] in pin["content"]
    listing = controller.run("tunnel", "list", "--no-probe").stdout
    assert node_id in listing


def check_network_config(cloud_init: CloudInit, data: bytes, tmp: Path) -> None:
    """cloud-init's own renderers (ifupdown, networkd) turn it into DHCP on ens3."""
    (tmp / "network-config").write_bytes(data)
    rendered = cloud_init.python(RENDER_NETWORK, str(tmp / "network-config"), str(tmp / "net"))
    assert rendered.returncode == 0, rendered.stderr
    eni = (tmp / "net/eni/etc/network/interfaces").read_text()
    assert "auto ens3\niface ens3 inet dhcp" in eni
    networkd = (tmp / "net/networkd/etc/systemd/network/10-cloud-init-ens3.network").read_text()
    assert "Name=ens3" in networkd and "DHCP=ipv4" in networkd


# cloud-init's network pipeline: parse the network-config, render it for ifupdown
# (Debian's first renderer) and systemd-networkd into a scratch root each.
RENDER_NETWORK = """
import sys, yaml
from cloudinit.net import eni, network_state, networkd
ns = network_state.parse_net_config_data(yaml.safe_load(open(sys.argv[1])))
for name, renderer in (("eni", eni.Renderer), ("networkd", networkd.Renderer)):
    renderer({}).render_network_state(ns, target=f"{sys.argv[2]}/{name}")
"""


def test_match_globs_are_not_what_cloud_init_renders_on_debian(
    cloud_init: CloudInit, tmp_path: Path
) -> None:
    """Why a seed without --interface has no network-config (cloud-init's fallback applies).

    A v2 ``match: {name: "e*"}`` looks right but cloud-init 22.4 renders it, for
    ifupdown, as an interface literally named after its YAML key: no DHCP at all.
    """
    glob = b'version: 2\nethernets:\n  primary:\n    match:\n      name: "e*"\n    dhcp4: true\n'
    (tmp_path / "network-config").write_bytes(glob)
    rendered = cloud_init.python(
        RENDER_NETWORK, str(tmp_path / "network-config"), str(tmp_path / "net")
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "iface primary inet dhcp" in (tmp_path / "net/eni/etc/network/interfaces").read_text()


def test_seed_image_is_private_even_over_a_readable_file(
    controller: Controller, tmp_path: Path, xorriso: str, isoinfo: str
) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_text("old")
    iso.chmod(0o644)
    controller.run("media", "build", "--role", "walrus", "-o", str(iso))
    assert iso.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert set(read_back(iso, tmp_path, xorriso, isoinfo)) == SEED


def test_failed_write_releases_the_tunnel_it_allocated(
    controller: Controller, tmp_path: Path
) -> None:
    args = ["--role", "nc", "--cluster", "foo", "--node-id", "nc-lost", "--callback"]
    bad = controller.run(
        "media", "build", *args, "--controller", "198.18.0.1",
        "-o", str(tmp_path / "missing" / "seed.iso"), check=False,
    )  # fmt: skip
    assert bad.returncode == 65
    assert "missing/seed.iso: cannot write the medium: No such file or directory" in bad.stderr
    assert "nc-lost" not in controller.run("tunnel", "list", "--no-probe").stdout
    assert "nc-lost" not in controller.callback_keys.read_text()


def test_rebuilding_a_callback_medium_replaces_the_key_and_says_so(
    controller: Controller, tmp_path: Path, xorriso: str, isoinfo: str
) -> None:
    args = ["--role", "nc", "--cluster", "foo", "--node-id", "nc-again", "--callback"]
    args += ["--controller", "198.18.0.1"]
    first = controller.run("media", "build", *args, "-o", str(tmp_path / "1.iso"))
    assert "warning" not in first.stderr
    before = controller.callback_keys.read_text()
    second = controller.run("media", "build", *args, "-o", str(tmp_path / "2.iso"))
    assert "its callback key is replaced, so media written for it earlier" in second.stderr
    after = controller.callback_keys.read_text()
    ports = re.findall(r"127\.0\.0\.1:(\d+)", before)
    assert ports == re.findall(r"127\.0\.0\.1:(\d+)", after)  # same ports, new key
    assert before != after
    keys = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        user = read_back(tmp_path / f"{n}.iso", tmp_path / str(n), xorriso, isoinfo)["user-data"]
        (key,) = [f for f in yaml.safe_load(user)["write_files"] if "PRIVATE" in f["content"]]
        keys.append(key["content"])
    assert keys[0] != keys[1]


# -- media inspect on seeds written by genisoimage ------------------------------------------

USER_DATA = """#cloud-config
hostname: nc7
users:
  - name: root
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7okWi0dh2l6GKJl c
write_files:
  - path: /etc/autoreg/autoreg.conf.d/50-medium.conf
    permissions: "0644"
    content: |
      [node]
      role = nc
      cluster = foo
      id = nc7-0001
      [callback]
      controller = 198.18.0.1
      listen_ports = 21000, 21001
  - path: /etc/autoreg/keys/callback_ed25519
    permissions: "{mode}"
    content: |
      -----BEGIN OPENSSH PRIVATE KEY-----
      -----END OPENSSH PRIVATE KEY-----
  - path: /etc/autoreg/keys/controller_known_hosts
    content: "autoreg-controller ssh-ed25519 AAAA"
"""
META_DATA = "instance-id: nc7\n"


def genisoimage_seed(
    genisoimage: str,
    tmp: Path,
    files: dict[str, str],
    *,
    label: str = "cidata",
    names: tuple[str, ...] = ("-J", "-r"),
) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    iso = tmp / "seed.iso"
    run([genisoimage, "-quiet", "-o", str(iso), "-V", label, *names, str(src)])
    return iso


GOOD = {"user-data": USER_DATA.format(mode="0600"), "meta-data": META_DATA}

BROKEN: dict[str, tuple[dict[str, Any], list[str]]] = {
    "good": ({}, []),
    "label": (
        {"label": "config-2"},
        ["volume label is 'config-2'; cloud-init looks for 'cidata' (e.g. genisoimage -V cidata)"],
    ),
    "plain names": (
        {"names": ()},
        [
            "the image has neither Rock Ridge nor Joliet names, so its files are seen as "
            "META_DAT, USER_DAT: write it with -r/-J (Rock Ridge/Joliet)",
            "user-data is missing from the root directory",
            "meta-data is missing from the root directory",
        ],
    ),
    "no meta-data": ({"drop": "meta-data"}, ["meta-data is missing from the root directory"]),
    "bad yaml": (
        {"user-data": "#cloud-config\nusers: [a\nhostname: x\n"},
        ["user-data is not valid YAML (line 3): expected ',' or ']', but got ':'"],
    ),
    "no header": (
        {"user-data": USER_DATA.format(mode="0600").replace("#cloud-config\n", "")},
        [
            "user-data does not start with '#cloud-config' (cloud-init would treat it as a "
            "script or ignore it)"
        ],
    ),
    "loose key": (
        {"user-data": USER_DATA.format(mode="0644")},
        ["the callback key /etc/autoreg/keys/callback_ed25519 is written with mode 0644: use 0600"],
    ),
    "no instance-id": (
        {"meta-data": "local-hostname: nc7\n"},
        ["meta-data has no instance-id (cloud-init would not run per-instance modules)"],
    ),
    "no autoreg": (
        {"user-data": "#cloud-config\nhostname: x\nssh_authorized_keys: [k]\n"},
        [
            "user-data writes no autoreg configuration "
            "(/etc/autoreg/autoreg.conf.d/*.conf or /etc/autoreg/autoreg.conf)"
        ],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_inspect_names_each_problem(
    case: str, controller: Controller, tmp_path: Path, genisoimage: str
) -> None:
    change, problems = BROKEN[case]
    files = dict(GOOD)
    for name in ("user-data", "meta-data"):
        if name in change:
            files[name] = change[name]
    files.pop(change.get("drop", ""), None)
    options = {k: change[k] for k in ("label", "names") if k in change}
    iso = genisoimage_seed(genisoimage, tmp_path, files, **options)
    result = controller.run("media", "inspect", "--json", str(iso), check=False)
    report = json.loads(result.stdout)
    assert report["problems"] == problems
    assert result.returncode == (1 if problems else 0)
    text = controller.run("media", "inspect", str(iso), check=False)
    for problem in problems:
        assert f"  problem: {problem}" in text.stdout
    assert text.stdout.rstrip().endswith("NOT a usable seed" if problems else "valid NoCloud seed")
    if not problems:
        assert report["secrets"] == ["/etc/autoreg/keys/callback_ed25519"]
        assert (report["autoreg_role"], report["autoreg_cluster"]) == ("nc", "foo")


def test_inspect_refuses_what_is_no_iso(controller: Controller, tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 40000)
    result = controller.run("media", "inspect", str(junk), check=False)
    assert result.returncode == 65
    assert f"{junk}: not an ISO 9660 image" in result.stderr


def test_keys_show_lists_what_media_carry(controller: Controller) -> None:
    shown = controller.json("keys", "show", "--json")
    pub = controller.sshd_host_key.with_suffix(".pub").read_text().split()
    assert shown["controller_pin"] == f"autoreg-controller {pub[0]} {pub[1]}"
    assert shown["callback_port"] == 2222
    assert shown["callback_user"] == "autoreg-callback"
    assert shown["controller_port_range"] == [21000, 21099]
    assert shown["controller_ports_per_node"] == 2
    assert shown["controller_user"] == "root"
    text = controller.run("keys", "show").stdout.splitlines()
    assert text[-1] == shown["public_key"]
    assert f"#   controller pin   {shown['controller_pin']}" in text
    assert "#   CONTROLLER_PORT  21000-21099, 2 per node" in text
    assert "#   CALLBACK_PORT    2222 (CALLBACK_USER autoreg-callback)" in text
    # CONTROLLER_KEY: ed25519, OpenSSH format, 0600; `keys init` again changes nothing.
    private = controller.keys / "controller_ed25519"
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    derived = run(["ssh-keygen", "-y", "-f", str(private)]).stdout.split()[:2]
    assert derived == shown["public_key"].split()[:2]
    before = private.read_bytes()
    again = controller.run("keys", "init")
    assert again.stderr.startswith("kept existing") and private.read_bytes() == before


def test_keys_show_without_sshd_host_key_says_why(controller: Controller) -> None:
    controller.sshd_host_key.with_suffix(".pub").unlink()
    shown = controller.json("keys", "show", "--json")
    assert shown["controller_pin"] is None
    assert "cannot read public key" in shown["controller_pin_error"]
    init = controller.run("keys", "init")
    assert "media for nodes that call back (--callback) also need" in init.stderr
    # And a callback medium is refused before anything is allocated.
    args = ["--role", "nc", "--cluster", "foo", "--node-id", "nc-nopin", "--callback"]
    bad = controller.run(
        "media", "build", *args, "--controller", "198.18.0.1", "-o", "/dev/null", check=False
    )
    assert bad.returncode == 73
    assert "a node that calls back pins the controller's sshd host key" in bad.stderr
    assert "nc-nopin" not in controller.run("tunnel", "list", "--no-probe").stdout
