"""The Debian packages: build, lint, install into a clean Debian 12 root, register a node
from the installed files, upgrade from the previous release, remove, purge, install anew.

The release installed first is the previous one, built from the history: the last
commit before trust existed (0.1.0).  The upgrade is this tree, so it exercises the
real schema migrations on a store full of data, and the trust rule for upgrades: an
installation that registered nodes without trust keeps doing so (``open``) and says
so, while a new installation of this tree starts at ``token``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.autoreg_lab import AutoregLab, wait_until
from support.debroot import DebRoot, build_debs

pytestmark = [pytest.mark.netns, pytest.mark.timeout(1500)]

CURRENT = __import__("registration").__version__


def _before_trust() -> str:
    """The last commit before trust: the parent of the one that added registration/_trust.py."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "registration/_trust.py"],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert added, "no commit adds registration/_trust.py: the history is missing (shallow clone?)"
    return f"{added[-1]}^"


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("debs")
    return {
        "previous": build_debs(out / "previous", ref=_before_trust()),
        "current": build_debs(out / "current"),
    }


@pytest.fixture
def debroot(tmp_path: Path) -> Iterator[DebRoot]:
    root = DebRoot(tmp_path / "debroot")
    try:
        yield root
    finally:
        root.close()


def test_packages_are_lintian_clean(debs: dict[str, list[Path]]) -> None:
    names = sorted(d.name.split("_")[0] for d in debs["current"])
    assert names == ["autoreg-controller", "autoreg-node", "python3-autoreg"]
    result = subprocess.run(
        ["lintian", "--tag-display-limit", "0", *map(str, debs["current"])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert not errors, result.stdout


def _installed(root: DebRoot, debs: list[Path], where: str) -> None:
    paths = root.copy_in(debs, where)
    root.run(
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            *paths,
        ],
        timeout=300,
    )


def _status(root: DebRoot) -> dict[str, object]:
    return json.loads(root.run(["autoreg", "status", "--json"]).stdout)  # type: ignore[no-any-return]


def test_install_register_upgrade_remove_purge(
    alab: AutoregLab, debs: dict[str, list[Path]], debroot: DebRoot
) -> None:
    root = debroot.path
    _installed(debroot, debs["previous"], "/tmp/debs-previous")
    # What the packages set up: user, hooks, units, sshd drop-in that sshd accepts.
    debroot.run(["getent", "passwd", "autoreg-callback"])
    assert (root / "etc/autoreg/hooks.d/walrus").resolve() == (
        root / "usr/share/autoreg/hooks/walrus"
    ).resolve() or Path((root / "etc/autoreg/hooks.d/walrus").readlink()) == Path(
        "/usr/share/autoreg/hooks/walrus"
    )
    debroot.run(["mkdir", "-p", "/run/sshd"])  # what systemd's RuntimeDirectory would do
    debroot.run(["sshd", "-t"])
    # The packages' own autopkgtest, against the installed files.
    test = debroot.copy_in([Path(__file__).parents[2] / "debian/tests/installed"], "/tmp/dep8")
    assert debroot.run(["sh", test[0]], timeout=120).stdout.strip().endswith("installed: ok")
    for unit in ("autoreg-daemon", "autoreg-announce", "autoreg-callback"):
        assert (root / f"lib/systemd/system/{unit}.service").exists()
        assert (root / f"etc/systemd/system/multi-user.target.wants/{unit}.service").is_symlink()

    # A booted system has a machine id (systemd writes it; debootstrap does not).
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    # The registrar and a node, on a lab network, running the INSTALLED programs.
    ctl = alab.lab.add_host("clc")
    node_host = alab.lab.add_host("walrus")
    node_dir = root / "var/lib/autoreg/node"
    (root / "etc/autoreg/autoreg.conf.d/10-test.conf").write_text(f"""[autoreg]
transport = zeroconf
interfaces = eth0
[controller]
role = clc
retry_initial = 0.5
connect_timeout = 5
node_receipt_path = {node_dir}/receipt.json
""")
    admin_note = "# the admin's own line, kept across upgrades\n"
    conf = root / "etc/autoreg/autoreg.conf"
    conf.write_text(conf.read_text() + admin_note)
    debroot.run(["autoreg", "keys", "init"])
    key = (root / "etc/autoreg/keys/controller_ed25519.pub").read_text().strip()
    sshd = node_host.start_sshd(authorized_keys=[key])
    (root / "etc/autoreg/node-test.conf").write_text("""[autoreg]
transport = zeroconf
state_dir = /var/lib/autoreg-node-test
[node]
role = walrus
id = walrus-deb
interface = eth0
host_key = /etc/autoreg/test-node-hostkey.pub
receipt_path = /var/lib/autoreg/node/receipt.json
poll_interval = 0.2
""")
    (root / "etc/autoreg/test-node-hostkey.pub").write_text(
        Path(f"{sshd.host_key_path}.pub").read_text()
    )
    daemon = ctl.spawn(debroot.chroot_argv(["autoreg", "daemon"]), log_name="daemon")
    daemon.wait_for_log(r"registrar clc started", 60)
    announcer = node_host.spawn(
        debroot.chroot_argv(["autoreg", "-c", "/etc/autoreg/node-test.conf", "announce"]),
        log_name="announce",
    )

    def node_state() -> str | None:
        listing = json.loads(debroot.run(["autoreg", "list", "--json"]).stdout)
        return next((n["state"] for n in listing if n["node_id"] == "walrus-deb"), None)

    wait_until(
        lambda: node_state() == "registered",
        60,
        lambda: f"registration (state {node_state()}); daemon log:\n{daemon.log_text()[-2000:]}",
    )
    announcer.wait_for_log(r"state=registered", 30)
    registry = root / "var/lib/autoreg/registry/walrus.tsv"
    assert registry.read_text().count("walrus-deb") == 1  # the SHIPPED hook did its work
    debroot.run(["autoreg", "lockdown", "on", "--role", "cc", "--reason", "before upgrade"])
    first_schema = _status(debroot)["schema_version"]
    assert daemon.terminate() == 0

    # Upgrade to this release: same registrations, same switches, schema migrated, and
    # the trust of a version without trust: open, said in the log and in the status.
    _installed(debroot, debs["current"], "/tmp/debs-current")
    # `autoreg bootstrap`'s agent, built from the installed package and Debian's own
    # libraries, runs on the standard library alone.
    build = (
        "from registration._bundle import build_bundle as b; "
        "open('/tmp/a.pyz', 'wb').write(b().data)"
    )
    debroot.run(["python3", "-c", build], timeout=120)
    check = json.loads(
        debroot.run(["python3", "-I", "-S", "/tmp/a.pyz", "check"], timeout=60).stdout
    )
    assert all(path.startswith("/tmp/a.pyz/") for path in check["modules"].values()), check
    assert debroot.run(["autoreg", "--version"]).stdout.strip().endswith(CURRENT)
    assert admin_note in conf.read_text()
    assert not list((root / "etc/autoreg").glob("*.dpkg-*"))
    daemon = ctl.spawn(debroot.chroot_argv(["autoreg", "daemon"]), log_name="daemon2")
    daemon.wait_for_log(r"registrar clc started", 60)
    status = _status(debroot)
    assert status["schema_version"] > first_schema  # type: ignore[operator]
    assert status["lockdown"] == {"cc": True}
    trust = status["trust"]
    assert trust["policy"] == "open" and "version without trust" in trust["source"]  # type: ignore[index]
    assert "trust = open" in daemon.log_text()
    assert "warning: every well-formed announcement" in debroot.run(["autoreg", "status"]).stderr
    assert node_state() == "registered"
    wait_until(
        lambda: json.loads(debroot.run(["autoreg", "show", "walrus-deb", "--json"]).stdout)["node"][
            "present"
        ],
        30,
        "the node seen again",
    )
    assert node_state() == "registered"
    assert registry.read_text().count("walrus-deb") == 1  # not registered twice
    assert daemon.terminate() == 0
    assert announcer.terminate() == 0

    # Remove keeps state; only purge removes it.
    debroot.run(["apt-get", "remove", "-y", "-q", "autoreg-controller", "autoreg-node"])
    assert (root / "var/lib/autoreg/autoreg.db").exists()
    assert (root / "etc/autoreg/keys/controller_ed25519").exists()
    debroot.run(
        ["apt-get", "purge", "-y", "-q", "autoreg-controller", "autoreg-node", "python3-autoreg"]
    )
    assert not (root / "var/lib/autoreg/autoreg.db").exists()
    assert not (root / "var/lib/autoreg/node").exists()
    assert not (root / "etc/autoreg/keys/controller_ed25519").exists()
    assert not (root / "etc/autoreg/autoreg.conf").exists()
    # The admin's own drop-in is not the packages' to delete.
    assert (root / "etc/autoreg/autoreg.conf.d/10-test.conf").exists()

    # A new installation of this release trusts signed announcements only.
    _installed(debroot, debs["current"], "/tmp/debs-current")
    debroot.run(["autoreg", "keys", "init"])
    daemon = ctl.spawn(debroot.chroot_argv(["autoreg", "daemon"]), log_name="daemon3")
    daemon.wait_for_log(r"registrar clc started", 60)
    trust = _status(debroot)["trust"]
    assert (trust["policy"], trust["source"]) == ("token", "default")  # type: ignore[index]
    assert "trust = open" not in daemon.log_text()
    assert daemon.terminate() == 0
