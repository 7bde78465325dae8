"""The shipped hook scripts (scripts/nc, scripts/cc, ...) against a real sshd.

Each test that talks to a node starts its own OpenSSH server on 127.0.0.1 on a
free high port, with a host key and a client key made in tmp_path, builds the
hook environment exactly as the daemon does (docs/hooks.md), and runs the
real script with nothing else in its environment but PATH and LANG.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.prerequisites import have_tools, prerequisite

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SSHD = Path("/usr/sbin/sshd")

pytestmark = [
    pytest.mark.timeout(60),
    prerequisite(
        "ssh",
        "scp",
        "ssh-keygen",
        str(SSHD),
        reason="needs the OpenSSH client and server (ssh, scp, ssh-keygen, /usr/sbin/sshd)",
    ),
]

CREDENTIALS = {
    "cloud-cert.pem": b"-----BEGIN CERTIFICATE-----\ncloud\n-----END CERTIFICATE-----\n",
    "cluster-cert.pem": b"-----BEGIN CERTIFICATE-----\ncluster\n-----END CERTIFICATE-----\n",
    "node-pk.pem": b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )


@dataclass
class Sshd:
    port: int
    host_pub: Path
    client_key: Path
    user: str


def _start_sshd(
    tmp: Path, host_key: Path, authorized: Path, *, sftp: bool = True
) -> tuple[subprocess.Popen[bytes], int]:
    """Start sshd on a free port; retry a few ports if one was taken meanwhile."""
    last_log = ""
    for attempt in range(3):
        port = _free_port()
        cfg = tmp / f"sshd_config.{attempt}"
        log = tmp / f"sshd.{attempt}.log"
        cfg.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {tmp / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp" if sftp else "# no sftp subsystem",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Server listening on" in text:
                return proc, port
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        _stop(proc)
        last_log = log.read_text(errors="replace")
        if "Address already in use" not in last_log:
            break
    pytest.fail(f"sshd did not start listening:\n{last_log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    yield from _sshd(tmp_path, sftp=True)


@pytest.fixture
def sshd_without_sftp(tmp_path: Path) -> Iterator[Sshd]:
    """A node's sshd without a ``Subsystem sftp`` line (scp cannot copy to it)."""
    yield from _sshd(tmp_path, sftp=False)


def _sshd(tmp_path: Path, *, sftp: bool) -> Iterator[Sshd]:
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    keys = tmp_path / "keys"
    keys.mkdir()
    host_key = keys / "ssh_host_ed25519_key"
    client_key = keys / "controller_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = keys / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    proc, port = _start_sshd(tmp_path, host_key, authorized, sftp=sftp)
    try:
        yield Sshd(
            port=port,
            host_pub=host_key.with_suffix(".pub"),
            client_key=client_key,
            user=getpass.getuser(),
        )
    finally:
        _stop(proc)


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    return out.split()[1]


def hook_env(
    tmp: Path, server: Sshd, *, role: str = "nc", port: int | None = None
) -> dict[str, str]:
    """The environment the daemon gives a hook, for a node behind ``server``."""
    port = server.port if port is None else port
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    key_type, key_b64 = server.host_pub.read_text().split()[:2]
    alias = "autoreg-n1abc"
    known_hosts = run / "known_hosts"
    known_hosts.write_text(
        f"{alias} {key_type} {key_b64}\n[127.0.0.1]:{port} {key_type} {key_b64}\n"
    )
    ssh_config = run / "ssh_config"
    ssh_config.write_text(
        "# Written by autoreg for hooks: ssh -F THIS_FILE node\n"
        "Host node\n"
        "    HostName 127.0.0.1\n"
        f"    Port {port}\n"
        f"    User {server.user}\n"
        f"    IdentityFile {server.client_key}\n"
        "    IdentitiesOnly yes\n"
        f"    HostKeyAlias {alias}\n"
        f"    UserKnownHostsFile {known_hosts}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    StrictHostKeyChecking yes\n"
        "    BatchMode yes\n"
        "    ConnectTimeout 5\n"
    )
    creds = tmp / "credentials"
    if not creds.exists():
        creds.mkdir()
        for name, data in CREDENTIALS.items():
            (creds / name).write_bytes(data)
            (creds / name).chmod(0o644)
    cluster = "" if role == "walrus" else "foo"
    registrar_role = "cc" if role == "nc" else "clc"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "AUTOREG_HOOK_VERSION": "1",
        "AUTOREG_ROLE": role,
        "AUTOREG_CLUSTER": cluster,
        "AUTOREG_NODE_ID": "n1abc",
        "AUTOREG_NAME": "node1",
        "AUTOREG_IP": "127.0.0.1",
        "AUTOREG_PORT": str(port),
        "AUTOREG_FINGERPRINT": _fingerprint(server.host_pub),
        "AUTOREG_KEY_TYPE": key_type,
        "AUTOREG_PATH": "direct",
        "AUTOREG_SSH_HOST": "127.0.0.1",
        "AUTOREG_SSH_PORT": str(port),
        "AUTOREG_SSH_USER": server.user,
        "AUTOREG_SSH_KEY": str(server.client_key),
        "AUTOREG_KNOWN_HOSTS": str(known_hosts),
        "AUTOREG_SSH_CONFIG": str(ssh_config),
        "AUTOREG_REGISTRAR_ROLE": registrar_role,
        "AUTOREG_REGISTRAR_CLUSTER": "foo" if registrar_role == "cc" else "",
        "AUTOREG_STATE_DIR": str(tmp / "state"),
        "AUTOREG_CREDENTIALS_DIR": str(creds),
        # The "node" is this host, so its directory lives in tmp_path too.
        "AUTOREG_NODE_DIR": str(tmp / "node" / "var" / "lib" / "autoreg" / "node"),
        "AUTOREG_ATTEMPT": "1",
        "AUTOREG_RESUMED": "0",
    }


def run_hook(
    role: str, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(SCRIPTS / role), *args],
        check=False,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=45,
        start_new_session=True,
    )


def _registry_rows(env: dict[str, str], role: str) -> list[list[str]]:
    tsv = Path(env["AUTOREG_STATE_DIR"]) / "registry" / f"{role}.tsv"
    lines = tsv.read_text().splitlines()
    assert lines[0].startswith("#")
    return [line.split("\t") for line in lines[1:]]


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_nc_registers_node_and_is_idempotent(tmp_path: Path, sshd: Sshd) -> None:
    env = hook_env(tmp_path, sshd, role="nc")
    proc = run_hook("nc", env, tmp_path / "cwd1")
    assert proc.returncode == 0, _explain(proc)

    node_dir = Path(env["AUTOREG_NODE_DIR"])
    creds = node_dir / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert sorted(p.name for p in creds.iterdir()) == sorted(CREDENTIALS)
    for name, data in CREDENTIALS.items():
        assert (creds / name).read_bytes() == data
        assert stat.S_IMODE((creds / name).stat().st_mode) == 0o600

    registered_by = (node_dir / "registered-by").read_text()
    fields = dict(line.split("=", 1) for line in registered_by.splitlines() if "=" in line)
    assert fields["registrar_role"] == "cc"
    assert fields["registrar_cluster"] == "foo"
    assert fields["registrar_host"] == os.uname().nodename
    assert fields["node_id"] == "n1abc"
    assert fields["time"].endswith("Z")

    rows = _registry_rows(env, "nc")
    assert len(rows) == 1
    assert rows[0][1:] == ["n1abc", "node1", "127.0.0.1", "foo"]

    # One log line per step.
    out = proc.stdout
    assert "credentials: copied and verified 3 file(s)" in out
    assert "registered-by: wrote" in out
    assert "registry: recorded node n1abc" in out

    # Again, as after an interrupted run: same result, no second registry line.
    env["AUTOREG_RESUMED"] = "1"
    env["AUTOREG_ATTEMPT"] = "2"
    again = run_hook("nc", env, tmp_path / "cwd2")
    assert again.returncode == 0, _explain(again)
    assert "already recorded" in again.stdout
    assert len(_registry_rows(env, "nc")) == 1
    for name in CREDENTIALS:
        assert stat.S_IMODE((creds / name).stat().st_mode) == 0o600
    assert not (creds / ".incoming").exists()
    assert stat.S_IMODE((node_dir / "registered-by").stat().st_mode) == 0o644

    # Another node is appended.
    env["AUTOREG_NODE_ID"] = "n2def"
    env["AUTOREG_NAME"] = "node2"
    third = run_hook("nc", env, tmp_path / "cwd3")
    assert third.returncode == 0, _explain(third)
    assert [row[1] for row in _registry_rows(env, "nc")] == ["n1abc", "n2def"]


def test_parallel_runs_record_each_node_once(tmp_path: Path, sshd: Sshd) -> None:
    """Hooks for several nodes run at once; the registry lock keeps one line per id."""
    env = hook_env(tmp_path, sshd, role="nc")
    procs = []
    for i, node_id in enumerate(["n1abc", "n1abc", "n2def", "n3ghi"]):
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        # One node directory per run: these stand for different hosts (the daemon
        # never runs two hooks for one node at once); the registry is shared.
        run_env = {
            **env,
            "AUTOREG_NODE_ID": node_id,
            "AUTOREG_NAME": f"host-{node_id}",
            "AUTOREG_NODE_DIR": str(tmp_path / f"node{i}"),
        }
        procs.append(
            subprocess.Popen(
                [str(SCRIPTS / "nc")],
                env=run_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=45)
        assert proc.returncode == 0, f"{out}\n{err}"
    ids = [row[1] for row in _registry_rows(env, "nc")]
    assert sorted(ids) == ["n1abc", "n2def", "n3ghi"]


def test_cc_on_clc_through_a_symlink(tmp_path: Path, sshd: Sshd) -> None:
    """A CLC-side hook, run as /etc/autoreg/hooks.d/cc would be: via a symlink."""
    hooks_d = tmp_path / "hooks.d"
    hooks_d.mkdir()
    (hooks_d / "cc").symlink_to(SCRIPTS / "cc")
    env = hook_env(tmp_path, sshd, role="cc")
    (tmp_path / "cwd").mkdir()
    proc = subprocess.run(
        [str(hooks_d / "cc")],
        check=False,
        env=env,
        cwd=tmp_path / "cwd",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert proc.returncode == 0, _explain(proc)
    fields = dict(
        line.split("=", 1)
        for line in (Path(env["AUTOREG_NODE_DIR"]) / "registered-by").read_text().splitlines()
        if "=" in line
    )
    assert fields["registrar_role"] == "clc"
    assert fields["role"] == "cc"
    assert fields["cluster"] == "foo"
    assert _registry_rows(env, "cc")[0][1:] == ["n1abc", "node1", "127.0.0.1", "foo"]


def test_empty_credentials_dir_is_not_an_error(tmp_path: Path, sshd: Sshd) -> None:
    env = hook_env(tmp_path, sshd, role="walrus")
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    env["AUTOREG_CREDENTIALS_DIR"] = str(empty)
    proc = run_hook("walrus", env, tmp_path / "cwd")
    assert proc.returncode == 0, _explain(proc)
    assert "credentials: nothing to copy" in proc.stdout
    assert (Path(env["AUTOREG_NODE_DIR"]) / "registered-by").is_file()
    assert _registry_rows(env, "walrus")[0][1:] == ["n1abc", "node1", "127.0.0.1", "-"]


def test_unreachable_node_fails(tmp_path: Path, sshd: Sshd) -> None:
    env = hook_env(tmp_path, sshd, role="nc", port=_free_port())  # nobody listens there
    proc = run_hook("nc", env, tmp_path / "cwd")
    assert proc.returncode not in (0, 77), _explain(proc)
    assert "error:" in proc.stderr
    assert not (Path(env["AUTOREG_STATE_DIR"]) / "registry" / "nc.tsv").exists()


def test_wrong_host_key_fails(tmp_path: Path, sshd: Sshd) -> None:
    env = hook_env(tmp_path, sshd, role="nc")
    other = tmp_path / "other_host_key"
    _keygen(other)
    key_type, key_b64 = other.with_suffix(".pub").read_text().split()[:2]
    Path(env["AUTOREG_KNOWN_HOSTS"]).write_text(
        f"autoreg-n1abc {key_type} {key_b64}\n[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n"
    )
    proc = run_hook("nc", env, tmp_path / "cwd")
    assert proc.returncode not in (0, 77), _explain(proc)
    assert not Path(env["AUTOREG_NODE_DIR"]).exists()


def test_node_without_sftp_subsystem_is_named(tmp_path: Path, sshd_without_sftp: Sshd) -> None:
    """scp copies over SFTP: without the subsystem the hook says what is missing."""
    env = hook_env(tmp_path, sshd_without_sftp, role="nc")
    proc = run_hook("nc", env, tmp_path / "cwd")
    assert proc.returncode == 75, _explain(proc)
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "no sftp subsystem" in line
    assert "Subsystem sftp internal-sftp" in line
    assert not (Path(env["AUTOREG_STATE_DIR"]) / "registry" / "nc.tsv").exists()


# -- where a hook finds its library (however it was installed) ----------

#: The library where the autoreg-controller package installs it.
PACKAGED_LIB = Path("/usr/share/autoreg/hooks/lib/autoreg-hook.sh")

needs_mount_namespace = pytest.mark.prerequisite(
    os.geteuid() == 0 and have_tools("unshare", "mount"),
    reason="needs root and unshare(1) for a private mount namespace",
)


def run_with_packaged_lib(
    hook: Path, env: dict[str, str], cwd: Path, *args: str, packaged: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``hook`` where /usr/share is a scratch tmpfs holding (or not) the packaged library.

    A private mount namespace: the machine's /usr/share is untouched and unseen,
    so the result does not depend on whether autoreg-controller is installed here.
    """
    cwd.mkdir(exist_ok=True)
    setup = "mount -n -t tmpfs tmpfs /usr/share"
    if packaged:
        setup += f' && mkdir -p {PACKAGED_LIB.parent} && cp "$1" {PACKAGED_LIB.parent}/'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{setup} && shift && exec "$@"', "sh", str(SCRIPTS / "lib" / "autoreg-hook.sh"),
         str(hook), *args],
        check=False,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=45,
        start_new_session=True,
    )  # fmt: skip


@needs_mount_namespace
def test_a_copy_made_with_install_uses_the_packaged_library(tmp_path: Path, sshd: Sshd) -> None:
    """docs/admin.md: `install -m 755 /usr/share/autoreg/hooks/nc /etc/autoreg/hooks.d/nc`."""
    hooks_d = tmp_path / "hooks.d"
    hooks_d.mkdir()
    subprocess.run(["install", "-m", "755", str(SCRIPTS / "nc"), str(hooks_d / "nc")], check=True)
    env = hook_env(tmp_path, sshd, role="nc")
    proc = run_with_packaged_lib(hooks_d / "nc", env, tmp_path / "cwd")
    assert proc.returncode == 0, _explain(proc)
    assert "registry: recorded node n1abc" in proc.stdout
    assert _registry_rows(env, "nc")[0][1] == "n1abc"


@needs_mount_namespace
def test_a_copy_without_any_library_says_where_it_looked(tmp_path: Path) -> None:
    hooks_d = tmp_path / "hooks.d"
    hooks_d.mkdir()
    subprocess.run(["install", "-m", "755", str(SCRIPTS / "cc"), str(hooks_d / "cc")], check=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = run_with_packaged_lib(hooks_d / "cc", env, tmp_path / "cwd", "--help", packaged=False)
    assert proc.returncode == 1, _explain(proc)
    (line,) = proc.stderr.splitlines()
    assert line.startswith("cc: error: cannot find the hook library (tried ")
    assert f"{hooks_d}/lib/autoreg-hook.sh" in line
    assert str(PACKAGED_LIB) in line
    assert "AUTOREG_HOOK_LIB" not in line  # the daemon's hooks never see it: no use as a hint


def test_a_copy_next_to_a_lib_directory_uses_it(tmp_path: Path) -> None:
    hooks_d = tmp_path / "hooks.d"
    hooks_d.mkdir()
    (hooks_d / "lib").symlink_to(SCRIPTS / "lib")
    subprocess.run(["install", "-m", "755", str(SCRIPTS / "sc"), str(hooks_d / "sc")], check=True)
    proc = subprocess.run(
        [str(hooks_d / "sc"), "--help"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.startswith("Usage: sc")


def test_an_unreadable_library_override_is_named(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AUTOREG_HOOK_LIB": "/nonexistent.sh"}
    proc = run_hook("walrus", env, tmp_path / "cwd", "--help")
    assert proc.returncode == 1, _explain(proc)
    assert "AUTOREG_HOOK_LIB=/nonexistent.sh" in proc.stderr


@pytest.mark.parametrize("role", ["walrus", "cc", "sc", "nc"])
def test_help(role: str, tmp_path: Path) -> None:
    proc = run_hook(role, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, tmp_path, "--help")
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.startswith(f"Usage: {role}")
    for var in ("AUTOREG_SSH_CONFIG", "AUTOREG_NODE_DIR", "AUTOREG_STATE_DIR", "AUTOREG_NODE_ID"):
        assert var in proc.stdout
    assert "Example" in proc.stdout
    assert "euca_conf --register-" in proc.stdout


@pytest.mark.parametrize("role", ["walrus", "cc", "sc", "nc"])
def test_missing_environment_exits_64_naming_the_variables(role: str, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AUTOREG_ROLE": role,
        "AUTOREG_NODE_ID": "n1abc",
        "AUTOREG_STATE_DIR": str(tmp_path / "state"),
    }
    proc = run_hook(role, env, tmp_path / "cwd")
    assert proc.returncode == 64, _explain(proc)
    missing_line = next(line for line in proc.stderr.splitlines() if "missing" in line)
    named = set(missing_line.split(":")[-1].split())
    expected = {"AUTOREG_IP", "AUTOREG_SSH_CONFIG", "AUTOREG_NODE_DIR"}
    if role != "walrus":
        expected.add("AUTOREG_CLUSTER")
    assert named == expected
    assert not (tmp_path / "state").exists()


def test_unexpected_argument_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_hook(
        "sc", {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, tmp_path, "--frobnicate"
    )
    assert proc.returncode == 64, _explain(proc)


def test_hook_library_override(tmp_path: Path) -> None:
    lib = tmp_path / "lib.sh"
    lib.write_text('autoreg_hook_main() { echo "custom lib for $HOOK_ROLE"; }\n')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AUTOREG_HOOK_LIB": str(lib)}
    proc = run_hook("nc", env, tmp_path / "cwd")
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.strip() == "custom lib for nc"


@pytest.mark.parametrize("role", ["walrus", "cc", "sc", "nc"])
def test_scripts_are_executable(role: str) -> None:
    assert os.access(SCRIPTS / role, os.X_OK)


@prerequisite("shellcheck", reason="needs shellcheck (Debian package shellcheck)")
def test_shellcheck_clean() -> None:
    files = [
        *(str(SCRIPTS / r) for r in ("walrus", "cc", "sc", "nc")),
        str(SCRIPTS / "lib" / "autoreg-hook.sh"),
    ]
    proc = subprocess.run(
        ["shellcheck", "-x", *files],
        check=False,
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
