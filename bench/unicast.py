#!/usr/bin/env python3
"""The HTTPS registration endpoint, measured; prints one JSON object.

On a namespace lab (``198.18.78.0/24``, real sshd, the real daemon with
``[controller] listen``), in one run:

1. **latency**: a node's signed record posted (``POST /v1/announce``, a new TLS
   connection, the certificate pinned) → its hook starting, against the same node
   announcing the same signed record over mDNS, trials alternating, each on a fresh
   node (new namespace, new sshd, new host key);
2. **throughput**: signed posts from one client (one connection, then 8 at once),
   of nodes whose role is locked down (they are stored, not dialled: the figure is
   the endpoint's, the intake's and the store's), and how long until all are stored;
3. **memory**: the daemon's RSS before and after 10,000 posts with a bad signature
   (refused with 403), and after 10,000 more.

    sudo .venv/bin/python bench/unicast.py [--trials K] [--posts N] [--json-out FILE]

Needs root (network namespaces); nothing leaves the lab's namespaces.  The rate
limit (``listen_rate``) is lifted for parts 2 and 3, so that they measure work,
not the limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, run_bench, summarize, use_test_support

SELF = str(Path(__file__).resolve())
LATENCY = str(Path(__file__).resolve().parent / "latency.py")
ROLE = "bench"
LAB_INDEX = 78
API_PORT = 8443
REJECTED = 10_000
TRIAL_TIMEOUT = 20.0
FLOOD_TIMEOUT = 300.0
HOOK = """#!/bin/sh
date +%s.%N > {dir}/"$AUTOREG_NODE_ID"
exit 0
"""


def log(message: str) -> None:
    print(f"[unicast {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- helper roles (run inside a lab namespace) -------------------------------------------


def _fake_fp(i: int) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(b"%d" % i).digest()).decode().rstrip("=")


async def _post(args: argparse.Namespace) -> int:
    """One signed post of a real node, timed from the call (the client is ready before)."""
    from registration.node import RegistrarClient
    from registration.protocol import Announcement, encode_node, parse_token

    ann = Announcement(node_id=args.id, role=ROLE, ip=args.ip, port=args.port,
                       fingerprint=args.fp)  # fmt: skip
    txt = encode_node(ann, token=parse_token(args.token), now=time.time())
    async with RegistrarClient(args.url, args.pin) as client:
        called = time.time()
        answer = await client.announce(txt, ann.port)
        returned = time.time()
    print(json.dumps({"posted": ann.node_id, "called": called, "returned": returned,
                      "accepted": answer.get("accepted")}), flush=True)  # fmt: skip
    # Stay (idle) until stopped, as the mDNS publisher does: no exit racing the trial.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 900)
    return 0


async def _flood(args: argparse.Namespace) -> int:
    """``--count`` signed posts (``--bad``: each with a field changed after signing)."""
    from registration._exceptions import RegistrarError
    from registration.node import RegistrarClient
    from registration.protocol import Announcement, encode_node, parse_token

    token = parse_token(args.token)
    bodies = []
    for i in range(args.count):
        ip = f"198.19.{1 + i // 250}.{1 + i % 250}"
        ann = Announcement(node_id=f"{args.prefix}{i:06d}", role=ROLE, port=22, ip=ip,
                           fingerprint=_fake_fp(i))  # fmt: skip
        txt = encode_node(ann, token=token, now=time.time())
        if args.bad:
            txt["name"] = "tampered"
        bodies.append(txt)
    statuses: collections.Counter[str] = collections.Counter()
    queue = collections.deque(bodies)
    async with RegistrarClient(args.url, args.pin, timeout=30,
                               connections=args.concurrency) as client:  # fmt: skip

        async def worker() -> None:
            while queue:
                txt = queue.popleft()
                try:
                    await client.announce(txt, 22)
                    statuses["202"] += 1
                except RegistrarError as exc:
                    statuses[str(exc.status or exc.code or "error")] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    print(json.dumps({"count": args.count, "seconds": elapsed, "statuses": statuses}), flush=True)
    return 0


def helper_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="unicast.py " + argv[0])
    p.add_argument("--url", required=True)
    p.add_argument("--pin", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--id")
    p.add_argument("--ip")
    p.add_argument("--port", type=int)
    p.add_argument("--fp")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--prefix", default="flood")
    p.add_argument("--bad", action="store_true")
    args = p.parse_args(argv[1:])
    return asyncio.run(_post(args) if argv[0] == "_post" else _flood(args))


# -- the benchmark ------------------------------------------------------------------------


def _rss_kib(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = secrets.token_hex(2)
        self.samples: dict[str, list[float]] = {"mdns": [], "unicast": []}
        self.round_trips: list[float] = []  # unicast: the POST's own time (TCP, TLS, HTTP)
        #: mode -> event kind -> seconds from the call to that event's first record
        self.steps: dict[str, dict[str, list[float]]] = {"mdns": {}, "unicast": {}}
        self.failures: dict[str, list[str]] = {"mdns": [], "unicast": [], "flood": []}
        self.results: dict[str, Any] = {}
        self._seq = 0
        self._warm = False

    def run(self) -> None:
        use_test_support()
        from support.autoreg_lab import AutoregLab
        from support.netlab import Lab

        with Lab(self.workdir / "lab", index=LAB_INDEX) as lab:
            alab = self.alab = AutoregLab(lab)
            ctl = self.ctl = alab.registrar("ctl", "clc")
            self.url = f"https://{ctl.host.ip}:{API_PORT}"
            ctl.extra = {
                f"role:{ROLE}": {"registered_by": "clc", "unique": "none"},
                "controller": {"trust": "token", "listen": f"{ctl.host.ip}:{API_PORT}",
                               "listen_rate": "1000000"},
            }  # fmt: skip
            ctl.write_config()
            self.token = ctl.cli("token", "create", "--role", ROLE, "--uses", "100000",
                                 "--ttl", "2h").stdout.strip().splitlines()[-1]  # fmt: skip
            self.pin = json.loads(ctl.cli("keys", "show", "--json").stdout)["api_fingerprint"]
            self.hooks = self.workdir / "hook-started"
            self.hooks.mkdir()
            ctl.hook(ROLE, HOOK.format(dir=shlex.quote(str(self.hooks))))
            ctl.start_daemon()
            log(f"registrar up at {self.url}; workdir {self.workdir}")
            self.latency()
            self.client = lab.add_host("client")
            self.throughput()
            self.memory()

    # -- 1. latency ----------------------------------------------------------------------

    def latency(self) -> None:
        plan = [(m, i) for i in range(self.args.warmup + self.args.trials)
                for m in ("mdns", "unicast")]  # fmt: skip
        for mode, index in plan:
            node_id = f"u{self.run_id}-{mode[0]}{index:02d}"
            self._warm = index < self.args.warmup
            try:
                seconds = self.trial(node_id, mode)
            except Exception as exc:
                self.failures[mode].append(f"{node_id}: {exc}")
                log(f"{mode} {node_id} FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                continue
            warm = index < self.args.warmup
            if not warm:
                self.samples[mode].append(seconds)
            log(f"{mode:8} {'warmup' if warm else index - self.args.warmup + 1}: "
                f"{seconds * 1000:7.1f} ms to hook start")  # fmt: skip

    def trial(self, node_id: str, mode: str) -> float:
        from support.autoreg_lab import wait_until

        self._seq += 1
        node = self.alab.node(f"n{self._seq}", ROLE)
        self.alab.authorize_all()
        assert node.sshd is not None
        self.alab.node_dir(node_id).mkdir(parents=True, exist_ok=True)
        common = ["--id", node_id, "--ip", node.host.ip, "--port", str(node.sshd.port),
                  "--fp", node.sshd.fingerprint, "--token", self.token]  # fmt: skip
        if mode == "mdns":
            argv = [sys.executable, LATENCY, "_publish", "--role", ROLE, *common]
            ready = r'^\{"published": .*$'
        else:
            argv = [sys.executable, SELF, "_post", "--url", self.url, "--pin", self.pin, *common]
            ready = r'^\{"posted": .*$'
        helper = node.host.spawn(argv, log_name=mode)
        try:
            said = json.loads(helper.wait_for_log(ready, TRIAL_TIMEOUT).group(0))
            called = said["called"]
            if mode == "unicast" and not self._warm:
                self.round_trips.append(said["returned"] - called)
            stamp = self.hooks / node_id
            wait_until(lambda: stamp.exists() and stamp.read_text().endswith("\n"),
                       TRIAL_TIMEOUT, f"the hook of {node_id}")  # fmt: skip
            hook_start = float(stamp.read_text())
            from registration.state import NodeState

            self.ctl.wait_state(node_id, NodeState.REGISTERED, timeout=TRIAL_TIMEOUT)
            if not self._warm:
                first: dict[str, float] = {}
                for event in self.ctl.events(node_id):
                    first.setdefault(event.kind, event.ts)
                for kind in ("announced", "queued", "registering", "hook-start"):
                    if kind in first:
                        self.steps[mode].setdefault(kind, []).append(first[kind] - called)
        finally:
            helper.terminate(10)
            node.sshd.stop()
        return hook_start - called

    # -- 2. throughput, 3. memory -----------------------------------------------------------

    def flood(self, prefix: str, count: int, concurrency: int, *, bad: bool = False) -> Any:
        argv = [sys.executable, SELF, "_flood", "--url", self.url, "--pin", self.pin,
                "--token", self.token, "--count", str(count), "--concurrency", str(concurrency),
                "--prefix", prefix, *(["--bad"] if bad else [])]  # fmt: skip
        result = self.client.run(argv, timeout=FLOOD_TIMEOUT)
        report = json.loads(result.stdout.decode().strip().splitlines()[-1])
        report["per_second"] = round(report["count"] / report["seconds"], 1)
        expected = "403" if bad else "202"
        if report["statuses"].get(expected, 0) != count:
            self.failures["flood"].append(f"{prefix}: {report['statuses']}")
        return report

    def _stored(self, prefix: str) -> int:
        from support.sync_store import SyncStore

        with SyncStore(self.ctl.state_dir / "autoreg.db", readonly=True) as store:
            return sum(r.node_id.startswith(prefix) for r in store.nodes())

    def throughput(self) -> None:
        from support.autoreg_lab import wait_until

        self.ctl.cli("lockdown", "on", "--role", ROLE, "--reason", "benchmark: store only")
        out: dict[str, Any] = {}
        for concurrency in (1, 8):
            prefix = f"t{concurrency}x{self.run_id}-"
            started = time.monotonic()
            report = self.flood(prefix, self.args.posts, concurrency)
            wait_until(lambda p=prefix: self._stored(p) == self.args.posts, 120,  # type: ignore[misc]
                       f"{self.args.posts} posted nodes stored")  # fmt: skip
            report["all_stored_after_s"] = round(time.monotonic() - started, 3)
            out[f"connections_{concurrency}"] = report
            log(f"throughput, {concurrency} connection(s): {report['per_second']} posts/s, "
                f"all stored after {report['all_stored_after_s']} s")  # fmt: skip
        self.results["throughput"] = out

    def memory(self) -> None:
        assert self.ctl.daemon is not None
        pid = self.ctl.daemon.pid
        before = _rss_kib(pid)
        first = self.flood(f"bad1{self.run_id}-", REJECTED, 8, bad=True)
        after = _rss_kib(pid)
        second = self.flood(f"bad2{self.run_id}-", REJECTED, 8, bad=True)
        again = _rss_kib(pid)
        log(f"RSS {before['VmRSS']} KiB, after {REJECTED} refused posts {after['VmRSS']} KiB, "
            f"after {2 * REJECTED} {again['VmRSS']} KiB")  # fmt: skip
        self.results["memory"] = {
            "rss_kib_before": before["VmRSS"],
            "rss_kib_after_10000_rejected": after["VmRSS"],
            "rss_kib_after_20000_rejected": again["VmRSS"],
            "peak_rss_kib": again["VmHWM"],
            "rejected_per_second": [first["per_second"], second["per_second"]],
            "statuses": [first["statuses"], second["statuses"]],
        }

    def report(self, wall: float) -> dict[str, Any]:
        latency = {m: summarize(v) for m, v in self.samples.items()}
        medians = [latency[m]["median"] for m in ("mdns", "unicast")]
        return {
            "benchmark": "unicast",
            "latency_post_to_hook_start_s": latency,
            "unicast_post_round_trip_s": summarize(self.round_trips),
            "median_s_from_call_to_event": {
                m: {k: summarize(v)["median"] for k, v in steps.items()}
                for m, steps in self.steps.items()
            },
            "unicast_minus_mdns_median_s": (
                round(medians[1] - medians[0], 4) if None not in medians else None
            ),
            **self.results,
            "failures": {k: v for k, v in self.failures.items() if v},
            "trials": self.args.trials,
            "posts": self.args.posts,
            "wall_s": round(wall, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "environment": environment(),
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["_post"], ["_flood"]):
        return helper_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10, metavar="K", help="timed trials per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed trials per mode first")
    p.add_argument("--posts", type=int, default=2000, metavar="N", help="posts per throughput run")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.warmup < 0 or args.posts < 1:
        p.error("--trials and --posts must be at least 1, --warmup at least 0")
    return run_bench(lambda workdir: Bench(args, workdir), prefix="autoreg-unicast-",
                     keep=args.keep, json_out=args.json_out, log=log)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
