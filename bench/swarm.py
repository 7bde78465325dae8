#!/usr/bin/env python3
"""Many nodes at once, and floods, on a real (namespaced) network; prints one JSON object.

A swarm of N nodes (N real OpenSSH sshd, one per node, each with its own host key
and address, in one namespace) announces itself at once through ONE publisher
process running N unchanged ``registration.node.Announcer`` on one event loop
and one shared transport, exactly as N ``autoreg announce`` would (``probe =
no``).  The registrar is the real ``python -m registration daemon`` with the
shipped defaults and no hook for the nodes' role.  The figures come from the
daemon's store (when each node was first seen, when it was registered),
``/proc`` (the daemon's CPU time, peak RSS, the UDP counters of its namespace)
and its log.

With ``--flood M``: M bogus, unsigned announcements pointing at black-holed
addresses, then K genuine nodes (``--genuine``), against the same K without the
flood in the same run, once per trust mode (``token``: the genuine nodes sign
with a join token; ``window``: an install window admits unsigned nodes).

    sudo .venv/bin/python bench/swarm.py --nodes 1000 [--flood 10000] [--runs 3]

Needs root (network namespaces).  Nothing touches the root namespace's network.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, run_bench, use_test_support
from _swarm_figures import (
    flood_summary,
    genuine_times,
    log_summary,
    rounded,
    swarm_figures,
    swarm_summary,
    udp_delta,
)

LAB_INDEX = 79  # 198.18.79.0/24 (latency.py uses 77, reach.py 78); nodes in 198.19.0.0/16
FLOOD_MODES = ("token", "window", "open")
#: Seconds a stopping publisher gets for its goodbyes, a stopping daemon for its work.
STOP_TIMEOUT = 60.0


def log(message: str) -> None:
    print(f"[swarm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu_of(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SwarmBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.failures: dict[str, list[str]] = {"swarm": [], "flood": []}
        self.swarm_runs: list[dict[str, Any]] = []
        self.flood_runs: list[dict[str, Any]] = []
        self.setup_s: float | None = None
        self.loadavg = _loadavg()

    def run(self) -> None:
        use_test_support()
        from support.swarm import SwarmLab

        args = self.args
        slots = max(args.nodes, 2 * args.genuine if args.flood else 0)
        started = time.monotonic()
        with SwarmLab(self.workdir, index=LAB_INDEX, nodes=slots, bogus=args.flood, log=log) as lab:
            self.setup_s = round(time.monotonic() - started, 1)
            log(f"lab up in {self.setup_s} s; workdir {self.workdir}")
            for run in range(1, args.runs + 1):
                parts: list[tuple[str, Any]] = []
                if args.nodes:
                    parts.append(("swarm", lambda r=run: self.swarm_run(lab, r)))
                if args.flood:
                    for mode in args.modes:
                        parts.append(("flood", lambda r=run, m=mode: self.flood_run(lab, r, m)))
                for kind, part in parts:
                    try:
                        part()
                    except Exception as exc:  # record, show, go on with the next part
                        self.failures[kind].append(f"run {run}: {exc}"[:2000])
                        log(f"{kind} run {run} FAILED: {exc}")
                        traceback.print_exc(file=sys.stderr)
                    finally:
                        lab.stop_daemon(STOP_TIMEOUT)

    # -- N at once ---------------------------------------------------------------------

    def swarm_run(self, lab: Any, run: int) -> None:
        args, n = self.args, self.args.nodes
        lab.start_daemon(f"swarm{run}", uptime=args.uptime)
        batch = lab.batch(f"s{run}-", n)
        cpu0, udp0 = lab.daemon_cpu(), lab.udp_counters()
        log(f"run {run}: {n} nodes announce at once")
        publisher = lab.announce(batch, name=f"announce-s{run}")
        try:
            timeout = args.wait if args.wait else 60 + 0.2 * n
            wait = lab.wait(batch.ids, timeout=timeout, stall=args.stall)
            cpu, status, udp = lab.daemon_cpu(), lab.daemon_status(), lab.udp_counters()
            pub_cpu = _cpu_of(publisher.proc.pid)
            # Then until every registered node's `state=registered` is back (the loop closed).
            closing = lab.wait(
                batch.ids,
                timeout=min(args.stall, 60.0),
                stall=min(args.stall, 30.0),
                until=lambda rows: all(
                    r.announced_state == "registered"
                    for r in rows.values()
                    if r.state == "registered"
                ),
            )
            figures = swarm_figures(batch.ids, wait.rows, publisher.started, n)
            registered = figures["registered"]
            drops = udp_delta(udp0, udp)
            figures.update(
                run=run,
                ended=wait.ended,
                wait_s=round(wait.elapsed, 1),
                daemon_cpu_s=round(cpu - cpu0, 2),
                cpu_per_node_ms=rounded((cpu - cpu0) * 1000 / n, 2) if registered == n else None,
                cpu_per_registered_ms=rounded((cpu - cpu0) * 1000 / registered, 2)
                if registered
                else None,
                daemon_cpu_s_loop_closed=round(lab.daemon_cpu() - cpu0, 2),
                loop_closed=sum(
                    r.announced_state == "registered"
                    for i, r in closing.rows.items()
                    if i in set(batch.ids) and r.state == "registered"
                ),
                rss_mb=round(lab.daemon_status().get("VmHWM", 0) / 1024, 1),
                rss_at_registered_all_mb=round(status.get("VmRSS", 0) / 1024, 1),
                peak_threads=max(wait.peak_threads, closing.peak_threads),
                udp_drops=drops["InErrors"],
                udp=drops,
                store_mb=round(lab.store_bytes() / 2**20, 2),
                events=lab.event_count(),
                receipts=lab.receipts(batch),
                publisher_cpu_s=round(pub_cpu, 2),
                daemon_log=log_summary(lab.daemon.log_text()),
            )
        finally:
            lab.stop_daemon(STOP_TIMEOUT)
            publisher.proc.terminate(STOP_TIMEOUT)
        self.swarm_runs.append(figures)
        log(
            f"run {run}: seen {figures['seen']}/{n} (all in {figures['seen_all_s']} s), "
            f"registered {registered}/{n} (all in {figures['registered_all_s']} s), "
            f"lost {figures['lost']}, stuck {figures['stuck']}, wait ended: {wait.ended}; "
            f"daemon CPU {figures['daemon_cpu_s']} s, peak RSS {figures['rss_mb']} MB, "
            f"UDP drops {figures['udp_drops']}"
        )

    # -- a flood ---------------------------------------------------------------------------

    def flood_run(self, lab: Any, run: int, mode: str) -> None:
        args, k = self.args, self.args.genuine
        trust = "open" if mode == "open" else "token"
        lab.start_daemon(f"flood-{mode}{run}", trust=trust, uptime=args.uptime)
        token = None
        if mode == "token":
            out = lab.cli("token", "create", "--role", "bench", "--uses", str(2 * k))
            token = out.strip().splitlines()[-1]
        elif mode == "window":
            lab.cli("window", "open", "--role", "bench", "--for", "2h")
        tag = f"{mode[0]}{run}"
        idle = lab.batch(f"g{tag}i-", k)
        genuine = lab.batch(f"g{tag}f-", k, first=k)
        publishers = []
        flood_proc = None
        try:
            log(f"run {run} {mode}: {k} genuine nodes, idle")
            publishers.append(lab.announce(idle, token=token, name=f"announce-{tag}i"))
            idle_wait = lab.wait(idle.ids, timeout=args.flood_wait, stall=args.flood_wait)
            idle_s = genuine_times(idle.ids, idle_wait.rows, publishers[0].started)
            cpu0, udp0 = lab.daemon_cpu(), lab.udp_counters()
            log(f"run {run} {mode}: flood of {args.flood} bogus announcements")
            bogus, flood_proc = lab.flood(f"b{tag}-", args.flood, rate=args.flood_rate)
            flood_proc.wait_for_log(r'"round": 1,', 60 + 2 * args.flood / args.flood_rate)
            stored = lab.snapshot()
            in_store = sum(b in stored for b in bogus)
            log(f"run {run} {mode}: first round sent ({in_store} in the store); {k} genuine")
            publishers.append(lab.announce(genuine, token=token, name=f"announce-{tag}f"))
            ids = set(genuine.ids)
            flood_wait = lab.wait(
                genuine.ids,
                timeout=args.flood_wait,
                stall=args.flood_wait,
                until=lambda rows: all(i in rows and rows[i].settled for i in ids),
            )
            flood_s = genuine_times(genuine.ids, flood_wait.rows, publishers[1].started)
            rows = flood_wait.rows
            result = {
                "run": run,
                "mode": mode,
                "bogus": args.flood,
                "genuine": k,
                "genuine_idle_s": [round(t, 3) for t in idle_s],
                "genuine_flood_s": [round(t, 3) for t in flood_s],
                "genuine_flood_states": dict(Counter(rows[i].state for i in ids if i in rows)),
                "genuine_lost_under_flood": sum(i not in rows for i in ids),
                "flood_wait_ended": flood_wait.ended,
                "bogus_in_store_when_genuine_announced": in_store,
                "bogus_states": dict(Counter(rows[b].state for b in bogus if b in rows)),
                "daemon_cpu_s": round(lab.daemon_cpu() - cpu0, 2),
                "rss_mb": round(lab.daemon_status().get("VmHWM", 0) / 1024, 1),
                "peak_threads": flood_wait.peak_threads,
                "udp": udp_delta(udp0, lab.udp_counters()),
                "store_mb": round(lab.store_bytes() / 2**20, 2),
                "events": lab.event_count(),
                "daemon_log": log_summary(lab.daemon.log_text()),
            }
        finally:
            lab.stop_daemon(STOP_TIMEOUT)
            for publisher in publishers:
                publisher.proc.terminate(STOP_TIMEOUT)
            if flood_proc is not None:
                flood_proc.terminate(5)
        self.flood_runs.append(result)
        log(
            f"run {run} {mode}: genuine registered idle {len(idle_s)}/{k} "
            f"(max {max(idle_s, default=None)} s), under the flood {len(flood_s)}/{k} "
            f"(max {max(flood_s, default=None)} s); bogus {result['bogus_states']}"
        )

    # -- the report ------------------------------------------------------------------------

    def report(self, wall: float) -> dict[str, Any]:
        import registration

        out: dict[str, Any] = {"benchmark": "swarm", "nodes": self.args.nodes}
        out.update(swarm_summary(self.swarm_runs))
        if self.args.flood:
            out["flood"] = self.args.flood
            out["genuine"] = self.args.genuine
            out.update(flood_summary(self.flood_runs, self.args.genuine))
        out["runs"] = self.swarm_runs
        if self.flood_runs:
            out["flood_runs"] = self.flood_runs
        out["failures"] = {k: v for k, v in self.failures.items() if v}
        out["settings"] = {
            "runs": self.args.runs,
            "uptime_s": self.args.uptime,
            "stall_s": self.args.stall,
            "wait_s": self.args.wait or f"60 + 0.2 * N = {60 + 0.2 * self.args.nodes:g}",
            "flood_wait_s": self.args.flood_wait,
            "flood_rate_per_s": self.args.flood_rate,
            "lab_setup_s": self.setup_s,
        }
        out["environment"] = environment(
            loadavg_start=self.loadavg,
            loadavg_end=_loadavg(),
            registration_path=str(Path(registration.__file__).parent),
        )
        out["wall_time_s"] = round(wall, 1)
        return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=0, metavar="N", help="nodes announcing at once")
    p.add_argument("--flood", type=int, default=0, metavar="M", help="bogus announcements")
    p.add_argument("--genuine", type=int, default=10, metavar="K",
                   help="genuine nodes in the flood part (default 10)")  # fmt: skip
    p.add_argument("--mode", dest="modes", action="append", choices=FLOOD_MODES,
                   help="flood trust mode (repeatable; default token, window)")  # fmt: skip
    p.add_argument("--runs", type=int, default=1, metavar="R", help="repetitions (fresh daemon)")
    p.add_argument("--uptime", type=float, default=20.0, metavar="S",
                   help="the daemon runs S seconds before nodes announce (default 20)")  # fmt: skip
    p.add_argument("--stall", type=float, default=60.0, metavar="S",
                   help="end a run after S seconds without progress (default 60)")  # fmt: skip
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="hard bound on a swarm run's wait (default 60 + 0.2 * N)")  # fmt: skip
    p.add_argument("--flood-wait", type=float, default=120.0, metavar="S",
                   help="bound on each wait for genuine nodes (default 120)")  # fmt: skip
    p.add_argument("--flood-rate", type=float, default=1000.0, metavar="R",
                   help="bogus announcements per second (default 1000)")  # fmt: skip
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if min(args.nodes, args.flood, args.uptime) < 0 or min(args.runs, args.genuine) < 1:
        p.error("--nodes, --flood and --uptime must be >= 0, --runs and --genuine >= 1")
    if not args.nodes and not args.flood:
        p.error("give --nodes N, --flood M, or both")
    if args.nodes > 31750 or args.flood > 31750:
        p.error("at most 31750 nodes and 31750 bogus announcements (the lab's address plan)")
    args.modes = args.modes or ["token", "window"]
    return run_bench(
        lambda workdir: SwarmBench(args, workdir),
        prefix="autoreg-swarm-",
        keep=args.keep,
        json_out=args.json_out,
        log=log,
    )


if __name__ == "__main__":
    sys.exit(main())
