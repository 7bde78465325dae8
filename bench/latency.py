#!/usr/bin/env python3
"""Registration latency on a real (namespaced) network; prints one JSON object.

For each trial a fresh node (its own network namespace and a real sshd) runs a
small *publisher* process that announces ``_autoreg._tcp`` exactly as
``autoreg announce`` does, recording ``time.time()`` immediately before the
publish call.  One registrar daemon (a real ``python -m registration daemon``
process, role ``clc``, registering the custom role ``bench``) browses, verifies
the node over SSH and runs the ``bench`` hook, whose first command writes
``date +%s.%N`` to a file.  A packet *listener* in the registrar's namespace
(a second socket on UDP 5353, SO_REUSEPORT) timestamps, with the kernel's
receive timestamp, the first mDNS packet that carries the node's id, and the
first *response* (announcement) that does.  All namespaces share one kernel
clock, so the timestamps compare directly.

Three modes, interleaved trial by trial: ``no_probe`` (the shipped default,
``cooperating_responders=True``: the first announcement goes out at once),
``probe`` (RFC 6762 §8.1 probing before the first announcement), and ``signed``
(as ``no_probe``, the record signed with a join token: the registrar checks the
signature and spends the token's use in the transaction that starts the
registration).  ``signed_vs_unsigned`` compares the two in the same run.

    sudo python bench/latency.py [--trials K] [--json-out FILE]

Needs root (network namespaces).  Nothing touches the root namespace's network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, percentile, run_bench, summarize, use_test_support

SELF = str(Path(__file__).resolve())

#: Goals (seconds).
GOAL_CONTROLLER_S = 0.05
GOAL_OVER_FLOOR_S = 0.25

#: RFC 6762 §8.1: a random 0-250 ms delay, then three probes 250 ms apart, and
#: 250 ms of silence after the third before announcing.
RFC_PROBE_RANDOM_DELAY_S = (0.0, 0.25)
RFC_PROBES = 3
RFC_PROBE_INTERVAL_S = 0.25
RFC_PROBE_FLOOR_S = sum(RFC_PROBE_RANDOM_DELAY_S) / 2 + RFC_PROBES * RFC_PROBE_INTERVAL_S

#: name -> (probe, signed)
MODES: dict[str, tuple[bool, bool]] = {
    "no_probe": (False, False),
    "probe": (True, False),
    "signed": (False, True),
}
#: Goal: a signed node's end-to-end latency within 10 % of an unsigned one's (medians).
GOAL_SIGNED_RATIO = 1.10
ROLE = "bench"  # registered_by = clc, unique = none: any number of trials may register
REGISTRAR_ROLE = "clc"
LAB_INDEX = 77  # 198.18.77.0/24, inside the lab's own namespaces only

#: Bounds (seconds) on every wait, so a broken build fails instead of hanging.
READY_TIMEOUT = 20.0
TRIAL_TIMEOUT = 20.0
PACKET_WAIT = 5.0
ABSENT_WAIT = 5.0
HELPER_LIFETIME = 900.0  # publisher/listener exit on their own after this, whatever happens

HOOK = """#!/bin/sh
date +%s.%N > {dir}/"$AUTOREG_NODE_ID"
exit 0
"""

#: Segments of the controller's share, between consecutive timestamps (see README).
SEGMENTS = (
    ("mdns_to_observed", "first_answer", "first_seen"),
    ("observed_to_saved", "first_seen", "ev_announced"),
    ("saved_to_decided", "ev_announced", "ev_registering"),
    ("decided_to_hook_start", "ev_registering", "ev_hook_start"),
    ("hook_start_to_hook_running", "ev_hook_start", "hook_start"),
)


def log(message: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- helper role: the node's publisher (runs inside the node's namespace) ----------------


def publisher_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="latency.py _publish")
    p.add_argument("--id", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fp", required=True)
    p.add_argument("--probe", action="store_true")
    p.add_argument("--token", help="sign with this join token (ID.SECRET)")
    args = p.parse_args(argv)
    return asyncio.run(_publish(args))


async def _publish(args: argparse.Namespace) -> int:
    from registration.protocol import (
        NODE_SERVICE_TYPE,
        Announcement,
        encode_node,
        instance_name,
        parse_token,
    )
    from registration.transport import ZeroconfTransport

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ann = Announcement(
        node_id=args.id, role=args.role, ip=args.ip, port=args.port, fingerprint=args.fp
    )
    token = parse_token(args.token) if args.token else None
    txt = encode_node(ann, token=token, now=time.time())
    # As autoreg announce: the transport bound to the node's address, then publish at once.
    transport = ZeroconfTransport([ann.ip])
    await transport.start()
    published = None
    try:
        called = time.time()
        published = await transport.publish(
            NODE_SERVICE_TYPE,
            instance_name(ann.role, ann.node_id),
            host=f"autoreg-{ann.node_id}.local.",
            ip=ann.ip,
            port=ann.port,
            txt=txt,
            probe=args.probe,
        )
        returned = time.time()
        print(
            json.dumps({"published": ann.node_id, "called": called, "returned": returned}),
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HELPER_LIFETIME)
    finally:
        if published is not None:
            await transport.withdraw(published)
        await transport.close()
    return 0


# -- helper role: the packet listener (runs inside the registrar's namespace) -------------

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same


def listener_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="latency.py _listen")
    p.add_argument("--ifaddr", required=True, help="join 224.0.0.251 on this address")
    p.add_argument("--pattern", required=True, help="regex for the node ids to watch")
    args = p.parse_args(argv)
    pattern = re.compile(args.pattern.encode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", MDNS_PORT))
    mreq = socket.inet_aton(MDNS_GROUP) + socket.inet_aton(args.ifaddr)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    kernel_stamps = True
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        kernel_stamps = False
    sock.settimeout(1.0)
    print(json.dumps({"ready": True, "kernel_timestamps": kernel_stamps}), flush=True)
    seen: set[tuple[bytes, str, str]] = set()
    deadline = time.monotonic() + HELPER_LIFETIME
    while time.monotonic() < deadline:
        try:
            data, ancdata, _flags, addr = sock.recvmsg(9000, 256)
        except TimeoutError:
            continue
        user = time.time()
        stamp = user
        for level, ctype, raw in ancdata:
            if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                stamp = sec + nsec / 1e9
        ids = {m.group(0) for m in pattern.finditer(data)}
        if not ids:
            continue
        # DNS header: byte 2, bit 0x80 = QR (1: a response/announcement, 0: a query/probe).
        kinds = ["packet", "answer"] if len(data) > 2 and data[2] & 0x80 else ["packet"]
        for node_id in sorted(ids):
            for kind in kinds:
                key = (node_id, kind, addr[0])
                if key in seen:
                    continue
                seen.add(key)
                print(
                    json.dumps(
                        {
                            "id": node_id.decode(),
                            "kind": kind,
                            "src": addr[0],
                            "t": stamp,
                            "t_user": user,
                        }
                    ),
                    flush=True,
                )
    return 0


# -- helper role: the SSH reference (runs inside the registrar's namespace) ---------------


def ssh_reference_main(argv: list[str]) -> int:
    """Time the daemon's own SSH verification (open_verified), alone, against one sshd."""
    p = argparse.ArgumentParser(prog="latency.py _ssh_reference")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fp", required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args(argv)
    import base64

    import paramiko

    from registration._sshkeys import fingerprint_of_blob
    from registration.controller._ssh import SSHTarget, load_private_key, open_verified

    key = load_private_key(args.key)
    target = SSHTarget(args.host, args.port, args.fp, "ssh-ed25519", "root", 5.0)
    out: dict[str, list[float]] = {"open_verified": [], "controller_cpu": [], "handshake": [],
                                   "auth": []}  # fmt: skip
    for i in range(args.count + 1):  # the first round warms up imports and caches
        cpu, wall = time.process_time(), time.perf_counter()
        open_verified(target, key).close()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        # The same steps again, split: TCP + banner + key exchange, then authentication.
        t0 = time.perf_counter()
        transport = paramiko.Transport(socket.create_connection((args.host, args.port), 5))
        try:
            transport.get_security_options().key_types = ("ssh-ed25519",)
            transport.start_client(timeout=5)
            t1 = time.perf_counter()
            blob = base64.b64decode(transport.get_remote_server_key().get_base64())
            assert fingerprint_of_blob(blob) == args.fp
            transport.auth_publickey("root", key)
            t2 = time.perf_counter()
        finally:
            transport.close()
        if i >= 1:
            out["open_verified"].append(wall)
            out["controller_cpu"].append(cpu)
            out["handshake"].append(t1 - t0)
            out["auth"].append(t2 - t1)
    print(json.dumps(out), flush=True)
    return 0


# -- the benchmark ----------------------------------------------------------------------


def _poll(fn: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _read_hook_stamp(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.endswith("\n"):
        return None  # the shell created the file; date has not written yet
    return float(text.strip())


def _packets(listener_log: str, node_id: str, src: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for line in listener_log.splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("id") == node_id and rec.get("src") == src and rec["kind"] not in found:
            found[rec["kind"]] = rec
    return found


def zeroconf_probing() -> dict[str, Any] | None:
    """python-zeroconf's own probing constants, and the floor they imply."""
    try:
        from zeroconf import _core, const
    except ImportError:
        return None
    delay = getattr(_core, "_PROBE_RANDOM_DELAY_INTERVAL", None)
    interval = getattr(const, "_CHECK_TIME", None)
    probes = getattr(_core, "_REGISTER_BROADCASTS", None)
    if delay is None or interval is None or probes is None:
        return None
    lo, hi = delay
    return {
        "random_delay_ms": [lo, hi],
        "probe_interval_ms": interval,
        "probes": probes,
        # As implemented: the random delay, then `probes` probes `interval` apart, and
        # the first announcement right after the last probe (no wait after it).
        "expected_floor_s": round(((lo + hi) / 2 + (probes - 1) * interval) / 1000, 4),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.token = secrets.token_hex(2)
        self.samples: list[dict[str, Any]] = []
        self.failures: dict[str, list[str]] = {m: [] for m in args.modes}
        self._seq = 0
        self.loadavg = _loadavg()

    def node_id(self, mode: str, warm: bool, index: int) -> str:
        return f"lat-{self.token}-{mode[0]}{'w' if warm else 't'}{index:02d}"

    def run(self) -> None:
        use_test_support()
        from registration.state import NodeState
        from support.autoreg_lab import AutoregLab
        from support.netlab import Lab

        self.NodeState = NodeState
        with Lab(self.workdir / "lab", index=LAB_INDEX) as lab:
            alab = self.alab = AutoregLab(lab)
            ctl = self.ctl = alab.registrar("ctl", REGISTRAR_ROLE)
            ctl.extra = {f"role:{ROLE}": {"registered_by": REGISTRAR_ROLE, "unique": "none"}}
            # trust = open, so that unsigned trials register too; a signed one is still
            # checked and admitted by its token (grant token:ID, a use spent).
            ctl.extra["controller"] = {"trust": "open"}
            ctl.write_config()
            self.join_token = (
                ctl.cli("token", "create", "--role", ROLE, "--uses", "10000", "--ttl", "2h")
                .stdout.strip()
                .splitlines()[-1]
            )
            self.hook_dir = self.workdir / "hook-started"
            self.hook_dir.mkdir()
            ctl.hook(ROLE, HOOK.format(dir=shlex.quote(str(self.hook_dir))))
            pattern = rf"lat-{self.token}-[a-z][wt][0-9]{{2}}"
            self.listener = ctl.host.spawn(
                [sys.executable, SELF, "_listen", "--ifaddr", ctl.host.ip, "--pattern", pattern],
                log_name="mdns-listener",
            )
            self.listener.wait_for_log(r'"ready": true', READY_TIMEOUT)
            ctl.start_daemon()
            log(f"registrar up in {ctl.host.netns} ({ctl.host.ip}); workdir {self.workdir}")
            plan = [(m, True, i) for i in range(self.args.warmup) for m in self.args.modes]
            plan += [(m, False, i) for i in range(self.args.trials) for m in self.args.modes]
            previous: str | None = None
            for mode, warm, index in plan:
                node_id = self.node_id(mode, warm, index)
                try:
                    sample = self.trial(node_id, mode, warm, previous)
                except Exception as exc:  # record, show, go on with the next trial
                    self.failures[mode].append(f"{node_id}: {exc}")
                    log(f"{mode} {node_id} FAILED: {exc}")
                    traceback.print_exc(file=sys.stderr)
                    if ctl.daemon is not None and not ctl.daemon.alive():
                        raise RuntimeError(
                            "the daemon died:\n" + ctl.daemon.log_text()[-3000:]
                        ) from exc
                else:
                    self.samples.append(sample)
                    log(
                        f"{mode:8} {'warmup' if warm else f'{index + 1}/{self.args.trials}'}: "
                        f"end-to-end {sample['end_to_end_s'] * 1000:7.1f} ms, controller "
                        f"{sample['controller_s'] * 1000:6.1f} ms, first packet after "
                        f"{sample['first_packet_after_publish_s'] * 1000:6.1f} ms"
                    )
                previous = node_id

    def trial(self, node_id: str, mode: str, warm: bool, previous: str | None) -> dict[str, Any]:
        self._seq += 1
        station = self.alab.node(f"n{self._seq}", ROLE)
        self.alab.authorize_all()
        assert station.sshd is not None
        self.alab.node_dir(node_id).mkdir(parents=True, exist_ok=True)  # receipt goes here
        if previous is not None:
            self._wait_absent(previous)  # the controller is idle again before we publish
        argv = [
            sys.executable, SELF, "_publish", "--id", node_id, "--role", ROLE,
            "--ip", station.host.ip, "--port", str(station.sshd.port),
            "--fp", station.sshd.fingerprint,
        ]  # fmt: skip
        probe, signed = MODES[mode]
        if probe:
            argv.append("--probe")
        if signed:
            argv += ["--token", self.join_token]
        publisher = station.host.spawn(argv, log_name="publisher")
        try:
            match = publisher.wait_for_log(r'^\{"published": .*$', READY_TIMEOUT)
            published = json.loads(match.group(0))
            hook_file = self.hook_dir / node_id
            hook_start = _poll(lambda: _read_hook_stamp(hook_file), TRIAL_TIMEOUT)
            if hook_start is None:
                rec = self.ctl.node(node_id)
                raise TimeoutError(
                    f"hook did not start within {TRIAL_TIMEOUT}s (record: {rec}); daemon log:\n"
                    + (self.ctl.daemon.log_text()[-2000:] if self.ctl.daemon else "")
                )
            rec = self.ctl.wait_state(node_id, self.NodeState.REGISTERED, timeout=TRIAL_TIMEOUT)
            packets = _poll(
                lambda: (
                    found
                    if len(found := _packets(self.listener.log_text(), node_id, station.host.ip))
                    == 2
                    else None
                ),
                PACKET_WAIT,
            )
            if packets is None:
                raise TimeoutError(f"the listener saw no announcement of {node_id}")
            events: dict[str, float] = {}
            for event in self.ctl.events(node_id):
                events.setdefault(event.kind, event.ts)
            # After the measurement, with the same sshd: the SSH verification on its own.
            ssh = self.measure_ssh_reference(station) if self.args.ssh_reference else None
        finally:
            publisher.terminate(10)  # SIGTERM: goodbye packets, as autoreg announce does
            station.sshd.stop()
        t = {
            "publish_called": published["called"],
            "publish_returned": published["returned"],
            "first_packet": packets["packet"]["t"],
            "first_answer": packets["answer"]["t"],
            "first_seen": rec.first_seen,
            "ev_announced": events.get("announced"),
            "ev_registering": events.get("registering"),
            "ev_hook_start": events.get("hook-start"),
            "hook_start": hook_start,
        }
        sample: dict[str, Any] = {
            "mode": mode,
            "node_id": node_id,
            "warmup": warm,
            "end_to_end_s": hook_start - t["publish_called"],
            "controller_s": hook_start - t["first_answer"],
            "first_packet_after_publish_s": t["first_packet"] - t["publish_called"],
            "first_answer_after_publish_s": t["first_answer"] - t["publish_called"],
            "publish_call_s": t["publish_returned"] - t["publish_called"],
            "listener_wakeup_s": packets["answer"]["t_user"] - packets["answer"]["t"],
            "ssh_reference_s": ssh,
            "segments_s": {
                name: (t[b] - t[a]) if t[a] is not None and t[b] is not None else None
                for name, a, b in SEGMENTS
            },
        }
        return sample

    def measure_ssh_reference(self, station: Any) -> dict[str, float] | None:
        """The daemon's SSH verification alone, from its namespace to this trial's sshd.

        Optional context for the figures: a failure here is logged, never fails the trial.
        """
        argv = [
            sys.executable, SELF, "_ssh_reference", "--host", station.host.ip,
            "--port", str(station.sshd.port), "--fp", station.sshd.fingerprint,
            "--key", str(self.ctl.keys_dir / "controller_ed25519"), "--count", "2",
        ]  # fmt: skip
        try:
            result = self.ctl.host.run(argv, timeout=60)
            raw: dict[str, list[float]] = json.loads(result.stdout.decode().splitlines()[-1])
        except Exception as exc:
            log(f"SSH reference against {station.host.ip} failed: {exc}")
            return None
        return {name: percentile(values, 0.5) for name, values in raw.items()}

    def _wait_absent(self, node_id: str) -> None:
        def gone() -> bool | None:
            rec = self.ctl.node(node_id)
            return True if rec is None or not rec.present else None

        if _poll(gone, ABSENT_WAIT, 0.05) is None:
            log(f"{node_id} still present {ABSENT_WAIT}s after its goodbye; going on")

    def report(self, wall: float) -> dict[str, Any]:
        zc = zeroconf_probing()
        modes: dict[str, Any] = {}
        for mode in self.args.modes:
            timed = [s for s in self.samples if s["mode"] == mode and not s["warmup"]]
            # The floor is what the installed python-zeroconf's probing takes (≈1.2 s for
            # 0.154); RFC 6762 §8.1's own minimum is reported beside it.
            probe_floor = zc["expected_floor_s"] if zc else RFC_PROBE_FLOOR_S
            floor = probe_floor if MODES[mode][0] else 0.0

            def col(key: str, rows: list[dict[str, Any]] = timed) -> list[float]:
                return [r[key] for r in rows]

            e2e, ctl = col("end_to_end_s"), col("controller_s")
            entry: dict[str, Any] = {
                "end_to_end_s": summarize(e2e),
                "controller_s": summarize(ctl),
                "first_packet_after_publish_s": summarize(col("first_packet_after_publish_s")),
                "first_announcement_after_publish_s": summarize(
                    col("first_answer_after_publish_s")
                ),
                "controller_breakdown_s": {
                    name: _brief([v for r in timed if (v := r["segments_s"][name]) is not None])
                    for name, _a, _b in SEGMENTS
                },
                "publish_call_s": _brief(col("publish_call_s")),
                "floor_s": floor,
                "warmup_end_to_end_s": [
                    round(s["end_to_end_s"], 4)
                    for s in self.samples
                    if s["mode"] == mode and s["warmup"]
                ],
                "failures": len(self.failures[mode]),
            }
            with_ssh = [r for r in timed if r["ssh_reference_s"]]
            if with_ssh:
                entry["ssh_reference_s"] = {
                    name: _brief([r["ssh_reference_s"][name] for r in with_ssh])
                    for name in with_ssh[0]["ssh_reference_s"]
                }
                entry["controller_minus_ssh_reference_s"] = _brief(
                    [r["controller_s"] - r["ssh_reference_s"]["open_verified"] for r in with_ssh]
                )
            if e2e:
                entry["goals_met"] = {
                    "controller_overhead": {
                        "median": percentile(ctl, 0.5) <= GOAL_CONTROLLER_S,
                        "p90": percentile(ctl, 0.9) <= GOAL_CONTROLLER_S,
                    },
                    "end_to_end": {
                        "median": percentile(e2e, 0.5) - floor <= GOAL_OVER_FLOOR_S,
                        "p90": percentile(e2e, 0.9) - floor <= GOAL_OVER_FLOOR_S,
                    },
                }
            if self.failures[mode]:
                entry["failure_reasons"] = [f[:300] for f in self.failures[mode]]
            modes[mode] = entry
        signed_vs_unsigned: dict[str, Any] | None = None
        plain = [s["end_to_end_s"] for s in self.samples if s["mode"] == "no_probe"
                 and not s["warmup"]]  # fmt: skip
        signed = [s["end_to_end_s"] for s in self.samples if s["mode"] == "signed"
                  and not s["warmup"]]  # fmt: skip
        if plain and signed:
            ratio = percentile(signed, 0.5) / percentile(plain, 0.5)
            signed_vs_unsigned = {
                "median_ratio": round(ratio, 3),
                "goal_ratio": GOAL_SIGNED_RATIO,
                "goal_met": ratio <= GOAL_SIGNED_RATIO,
            }
        out: dict[str, Any] = {
            "benchmark": "latency",
            "signed_vs_unsigned": signed_vs_unsigned,
            "trials": self.args.trials,
            "warmup_trials": self.args.warmup,
            "modes": modes,
            "goals": {
                "controller_overhead_s": GOAL_CONTROLLER_S,
                "end_to_end_over_probe_floor_s": GOAL_OVER_FLOOR_S,
            },
            "probe_floor_s": zc["expected_floor_s"] if zc else RFC_PROBE_FLOOR_S,
            "rfc_probe_floor_s": RFC_PROBE_FLOOR_S,
            "zeroconf_probing": zc,
            "environment": environment(loadavg_start=self.loadavg, loadavg_end=_loadavg()),
            "wall_time_s": round(wall, 1),
        }
        if self.args.samples:
            out["samples"] = [_rounded(s) for s in self.samples]
        return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _brief(values: list[float]) -> dict[str, float | None]:
    full = summarize(values)
    return {"median": full["median"], "p90": full["p90"]}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_publish"]:
        return publisher_main(argv[1:])
    if argv[:1] == ["_listen"]:
        return listener_main(argv[1:])
    if argv[:1] == ["_ssh_reference"]:
        return ssh_reference_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10, metavar="K", help="timed trials per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed trials per mode first")
    p.add_argument("--mode", dest="modes", action="append", choices=list(MODES),
                   help="only this mode (repeatable; default: both)")  # fmt: skip
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    p.add_argument("--samples", action="store_true", help="include every trial in the JSON")
    p.add_argument("--no-ssh-reference", dest="ssh_reference", action="store_false",
                   help="skip timing the SSH verification alone")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.warmup < 0:
        p.error("--trials must be at least 1 and --warmup at least 0")
    args.modes = args.modes or list(MODES)
    return run_bench(
        lambda workdir: Bench(args, workdir),
        prefix="autoreg-bench-",
        keep=args.keep,
        json_out=args.json_out,
        log=log,
    )


if __name__ == "__main__":
    sys.exit(main())
