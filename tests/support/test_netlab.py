"""Self-test of the namespace lab (needs root; raises LabUnavailable otherwise, never skips)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import netlab
from .netlab import Host, Lab

pytestmark = [pytest.mark.timeout(60), pytest.mark.netns]

PY = sys.executable

TCP_CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.recv(64).decode(errors="replace").strip())
"""

MCAST_RECV = """
import socket, struct, sys
group, port, ifaddr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(ifaddr)))
s.settimeout(10)
print("joined", flush=True)
data, addr = s.recvfrom(1024)
print("got", data.decode(), "from", addr[0], flush=True)
"""

MCAST_SEND = """
import socket, sys, time
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(10):  # the receiver exits after the first datagram; 0.5 s at most
    s.sendto(b"hello-netlab", (group, port))
    time.sleep(0.05)
"""


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, timeout=10, check=True, text=True
    ).stdout


def _others() -> tuple[set[str], set[int]]:
    """Namespaces and processes of labs other tests keep open (a session's etcd cluster)."""
    return set(netlab.leaked_namespaces()), set(netlab.leaked_processes())


def _assert_gone(namespaces: list[str], pids: list[int], others: tuple[set[str], set[int]]) -> None:
    listing = _netns_list()
    assert not [n for n in namespaces if n in listing], listing
    assert not [p for p in pids if _pid_alive(p)]
    assert set(netlab.leaked_namespaces()) <= others[0]
    assert set(netlab.leaked_processes()) <= others[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    others = _others()
    with Lab(tmp_path / "lab", index=77) as the_lab:
        yield the_lab
    assert set(netlab.leaked_namespaces()) <= others[0]
    assert set(netlab.leaked_processes()) <= others[1]


def _tcp_connect(src: Host, ip: str, port: int, timeout: float = 3) -> str:
    res = src.run([PY, "-c", TCP_CONNECT, ip, str(port), str(timeout)], timeout=timeout + 5)
    return res.stdout.decode()


def test_hosts_reach_each_other(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    assert (a.ip, b.ip) == ("198.18.77.1", "198.18.77.2")
    assert a.ifname == "eth0" and a.workdir == lab.workdir / "a" and a.workdir.is_dir()
    assert "198.18.77.2/24" in b.run(["ip", "-4", "addr", "show", "dev", "eth0"]).stdout.decode()
    assert "224.0.0.0/4 dev eth0" in a.run(["ip", "route"]).stdout.decode()
    if shutil.which("ping"):
        a.run(["ping", "-c1", "-W2", b.ip], timeout=10)
        b.run(["ping", "-c1", "-W2", a.ip], timeout=10)
    else:
        sshd = b.start_sshd()
        assert _tcp_connect(a, b.ip, sshd.port).startswith("SSH-2.0-OpenSSH")
    # Nothing of the lab is visible in the root namespace.
    root_links = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, timeout=10, check=True, text=True
    ).stdout
    assert lab.tag not in root_links and "p1-a" not in root_links


def test_sshd_keyscan_login_and_fingerprint(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    client_key = tmp_path / "client_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)],
        check=True,
        timeout=30,
    )
    sshd = b.start_sshd(port=2222, authorized_keys=[client_key.with_suffix(".pub").read_text()])
    assert (sshd.address, sshd.port) == (b.ip, 2222) and sshd.proc.alive()
    pub = sshd.host_key_path.with_suffix(".pub")
    assert sshd.host_key_path.is_file() and pub.is_file()
    expected = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, check=True, timeout=10, text=True
    ).stdout.split()[1]
    assert sshd.fingerprint == expected and sshd.fingerprint.startswith("SHA256:")
    config = sshd.config_path.read_text()
    assert "0.0.0.0" not in config and config.count("ListenAddress") == 1
    assert (sshd.authorized_keys_path.stat().st_mode & 0o777) == 0o600

    scan = a.run(["ssh-keyscan", "-T", "5", "-p", "2222", b.ip], timeout=15).stdout.decode()
    scanned = [ln for ln in scan.splitlines() if " ssh-ed25519 " in ln]
    assert scanned, scan
    fp = a.run(["ssh-keygen", "-lf", "-"], input=scanned[0].encode()).stdout.decode().split()[1]
    assert fp == sshd.fingerprint
    # Bound to the host address only: loopback inside the namespace is refused.
    loop = b.run([PY, "-c", TCP_CONNECT, "127.0.0.1", "2222", "2"], check=False, timeout=10)
    assert loop.returncode != 0 and b"Connection refused" in loop.stderr

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line() + "\n")
    login = a.run(
        [
            "ssh",
            "-i",
            str(client_key),
            "-p",
            "2222",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            f"root@{b.ip}",
            "echo",
            "logged-in",
        ],
        timeout=20,
    )
    assert login.stdout.decode().strip() == "logged-in"
    sshd.proc.wait_for_log(r"Accepted publickey for root", 5)
    assert sshd.stop() is not None and not sshd.proc.alive()


def test_multicast_between_hosts(lab: Lab) -> None:
    a, b = lab.add_host("sender"), lab.add_host("receiver")
    group, port = "239.255.77.77", "45454"
    recv = b.spawn([PY, "-c", MCAST_RECV, group, port, b.ip], log_name="mcast-recv")
    recv.wait_for_log(r"^joined", 10)
    a.run([PY, "-c", MCAST_SEND, group, port], timeout=10)
    m = recv.wait_for_log(r"^got (\S+) from (\S+)", 10)
    assert m.groups() == ("hello-netlab", a.ip)
    assert recv.wait(5) == 0


def test_proc_helpers(lab: Lab) -> None:
    h = lab.add_host("h")
    p = h.spawn(
        ["sh", "-c", "echo hello; echo $FOO; exec sleep 30"], env={"FOO": "bar"}, log_name="sleeper"
    )
    p.wait_for_log(r"^bar$", 5)
    assert p.log_path == h.workdir / "sleeper.log" and "hello" in p.log_text()
    with pytest.raises(AssertionError, match=r"(?s)timed out.*hello"):
        p.wait_for_log("never-printed", 0.3)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.2)
    p.signal(signal.SIGSTOP)
    p.signal(signal.SIGCONT)
    assert p.terminate(timeout=5) == -signal.SIGTERM and not p.alive()
    # A process that dies before logging fails fast, with its output in the message.
    q = h.spawn(["sh", "-c", "echo boom >&2; exit 3"], log_name="sleeper")
    with pytest.raises(AssertionError, match=r"(?s)exited with code 3.*boom"):
        q.wait_for_log("ready", 10)
    assert "hello" not in q.log_text()  # only this run's part of the shared log
    with pytest.raises(netlab.CommandError, match="no-such-thing"):
        h.run(["ls", "/no-such-thing"])
    with pytest.raises(subprocess.TimeoutExpired):
        h.run(["sleep", "10"], timeout=0.5)


def test_close_removes_namespaces_and_processes(tmp_path: Path) -> None:
    others = _others()
    with Lab(tmp_path / "lab") as lab:
        hosts = [lab.add_host("a"), lab.add_host("b")]
        namespaces = [lab.switch_netns, *(h.netns for h in hosts)]
        assert all(n in _netns_list() for n in namespaces)
        sleeper = hosts[0].spawn(["sleep", "300"], log_name="sleep")
        # A child that escapes into its own session: only the namespace sweep can find it.
        escaper = hosts[1].spawn(
            ["sh", "-c", "setsid sleep 300 & echo child=$!; exec sleep 300"], log_name="escape"
        )
        child = int(escaper.wait_for_log(r"child=(\d+)", 5).group(1))
        pids = [sleeper.pid, escaper.pid, child]
        assert set(pids) <= set(netlab.leaked_processes())
        assert set(namespaces) <= set(netlab.leaked_namespaces())
        assert lab in netlab.open_labs()
    assert lab not in netlab.open_labs()
    _assert_gone(namespaces, pids, others)
    lab.close()  # idempotent
    with pytest.raises(netlab.LabError, match="closed"):
        hosts[0].run(["true"])


def test_failing_body_still_cleans_up(tmp_path: Path) -> None:
    others = _others()
    namespaces: list[str] = []
    pids: list[int] = []
    with (
        pytest.raises(RuntimeError, match="test body failed"),
        Lab(tmp_path / "lab", index=3) as lab,
    ):
        h = lab.add_host("x")
        namespaces += [lab.switch_netns, h.netns]
        pids.append(h.spawn(["sleep", "300"], log_name="sleep").pid)
        pids.append(h.start_sshd().proc.pid)
        raise RuntimeError("test body failed")
    _assert_gone(namespaces, pids, others)


def test_firewall_or_clear_error(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    sshd = b.start_sshd()
    if not (shutil.which("nft") or shutil.which("iptables")):
        with pytest.raises(netlab.FirewallUnavailable, match="neither nft nor iptables"):
            b.drop_inbound_tcp(sshd.port)
        return
    b.drop_inbound_tcp(sshd.port)
    blocked = a.run([PY, "-c", TCP_CONNECT, b.ip, str(sshd.port), "1"], check=False, timeout=10)
    assert blocked.returncode != 0 and b"timed out" in blocked.stderr
    b.allow_inbound_tcp(sshd.port)
    assert _tcp_connect(a, b.ip, sshd.port).startswith("SSH-2.0-")


def test_refuses_bad_input_and_non_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="index"):
        Lab(tmp_path, index=256)
    with Lab(tmp_path / "lab") as lab:
        lab.add_host("a")
        for bad in ("a", "has space", "x" * 41, "dot.ted"):
            with pytest.raises(ValueError):
                lab.add_host(bad)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netlab.LabUnavailable, match="root"):
        Lab(tmp_path / "nope")


ATEXIT_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from support import netlab
lab = netlab.Lab(Path(sys.argv[2]))
proc = lab.add_host("z").spawn(["sleep", "300"], log_name="sleep")
print(lab.tag, proc.pid, flush=True)
"""  # exits without closing the lab: the atexit hook must clean up


def test_atexit_closes_forgotten_lab(tmp_path: Path) -> None:
    tests_dir = str(Path(netlab.__file__).resolve().parent.parent)
    out = subprocess.run(
        [PY, "-c", ATEXIT_CHILD, tests_dir, str(tmp_path / "lab")],
        capture_output=True,
        check=True,
        timeout=30,
        text=True,
    ).stdout
    tag, pid = out.split()
    assert tag.startswith("ar") and tag not in _netns_list()
    assert not _pid_alive(int(pid))
