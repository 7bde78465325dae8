"""Errors an admin meets on a real network, each one line that says what was tried.

`autoreg exec`/`ssh` against something that is not an sshd and against an
address nobody answers at; `autoreg discover` where no registrar is, on an
interface that is down, on a host without a network; the reasons a daemon
records for a hook that cannot run and for one it had to kill.  Everything
that dials out runs inside the lab's namespaces (``Station.cli_in_ns``).
"""

from __future__ import annotations

import time

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

S = NodeState
FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
#: A TCP service on port 22 that is not sshd: it answers, but not with an SSH banner.
NOT_SSHD = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"HTTP/1.0 400 Bad Request\\r\\n\\r\\n")
    c.close()
"""


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception (client)" not in stderr, stderr


def test_exec_and_ssh_say_per_node_what_failed_without_a_traceback(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    web = alab.lab.add_host("web")
    web.spawn(["python3", "-c", NOT_SSHD], log_name="web").wait_for_log("listening", 10)
    nobody = f"{alab.lab.hosts['web'].ip.rsplit('.', 1)[0]}.250"  # no host has it
    clc.cli("register", "--role", "walrus", "--ip", web.ip, "--fingerprint", FP, "--id", "web-1")
    clc.cli("register", "--role", "cc", "--cluster", "foo", "--ip", nobody,
            "--fingerprint", FP, "--id", "gone-1")  # fmt: skip

    result = clc.cli_in_ns("exec", "--node", "web-1", "--node", "gone-1", "--", "uptime",
                           check=False)  # fmt: skip
    assert result.returncode == 1
    no_traceback(result.stderr)
    assert result.stderr.strip().splitlines() == ["autoreg: error: 2 of 2 node(s) failed"]
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["NODE", "PATH", "EXIT", "SECONDS", "ERROR"]
    assert len(rows) == 2
    web_row = next(r for r in rows if r.startswith("web-1"))
    assert f"direct: {web.ip}:22: SSH handshake failed" in web_row
    assert "is an SSH server listening there?" in web_row
    gone_row = next(r for r in rows if r.startswith("gone-1"))
    assert f"direct: {nobody}:22:" in gone_row

    result = clc.cli_in_ns("ssh", "web-1", "--", "true", check=False)
    assert result.returncode == 1
    no_traceback(result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"autoreg: error: {web.ip}:22: no path works (direct: ")


def test_discover_says_where_it_looked(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    ip = clc.host.ip

    def discover() -> str:
        result = clc.cli_in_ns("discover", "--timeout", "0.5", check=False)
        assert result.returncode == 1
        assert result.stdout == ""
        no_traceback(result.stderr)
        (line,) = result.stderr.strip().splitlines()
        return line

    looked = f"browsed for _autoreg-ctl._tcp.local. (mDNS, 224.0.0.251 port 5353) on eth0 {ip}"
    assert discover() == f"autoreg: error: no registrar answered within 0.5 s: {looked}"
    clc.extra["autoreg"] = {"interfaces": ""}  # every interface but loopback: the same one
    assert discover().endswith(looked)
    clc.host.run(["ip", "link", "set", "eth0", "down"])
    assert discover().endswith(f"{looked}; eth0 is down")
    clc.host.run(["ip", "link", "del", "eth0"])
    assert discover().endswith(
        "on no interface; this host has no network interface with an IPv4 address but loopback"
    )
    clc.extra["autoreg"] = {"interfaces": "eth0"}
    result = clc.cli_in_ns("discover", "--timeout", "0.5", check=False)
    assert result.returncode == 78
    assert "interface 'eth0' does not exist or has no IPv4 address" in result.stderr


def test_hook_failure_reasons_say_what_happened(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    clc.extra["controller"] = {"hook_timeout": "1", "max_attempts": "1"}
    walrus = alab.node("walrus", "walrus")
    cc = alab.node("cc", "cc", cluster="foo")
    alab.authorize_all()
    clc.hook("walrus", "#!/bin/sh\necho started\nexec sleep 60\n")
    clc.hook("cc", "#!/bin/sh\nexit 0\n").chmod(0o644)  # not executable
    clc.start_daemon()
    started = time.monotonic()
    walrus.start_announcer()
    cc.start_announcer()

    rec = clc.wait_state(cc.node_id, S.FAILED)
    assert "hook is not executable (chmod +x it, or remove it)" in rec.reason
    assert "exit None" not in rec.reason

    rec = clc.wait_state(walrus.node_id, S.FAILED)
    assert "killed after hook_timeout (1 s)" in rec.reason
    assert "exit -15" not in rec.reason and "exit -9" not in rec.reason
    assert time.monotonic() - started < 30
    text = clc.cli("show", walrus.node_id).stdout
    assert "[hook: killed after hook_timeout (1 s); 1 line(s) of output" in text
    assert "      | started" in text
