#!/usr/bin/env python3
"""One registrar against two sharing etcd, N nodes at once, and a failover; one JSON object.

On the namespace lab (``tests/support/halab.py``): a three-member TLS etcd cluster
(Debian's etcd-server), N nodes (one real OpenSSH sshd each, its own address and host
key, one publisher process running N unchanged ``Announcer``), real ``autoreg
daemon`` registrars (``store = etcd``, shipped timings, ``etcd_lease_ttl`` as given)
with a hook that logs each run's start and end.

0. ``sqlite``: the baseline, one registrar on its embedded sqlite store.
1. ``one``: one registrar on etcd; the N nodes announce at once: seconds until the
   last one is registered (``registered_all_s_one``, from the publisher's start to
   the last ``registered_at`` in the store).
2. ``two``: two registrars of the same role on the same store, N other node ids on
   the same machines: ``registered_all_s_two``; who registered how many.
3. ``failover``: two registrars, the hook paused so that registrations are in
   flight; registrar A (the one holding claims with hooks running) is killed with
   SIGKILL, hooks and all, as systemd would kill its cgroup: ``failover_s`` is from
   the kill to B's first takeover of A's nodes (the crash-recovery policy applied),
   ``failover_all_s`` until every node is settled: registered, or ``interrupted``
   (a hook A had started: the shipped policy, ``resume_interrupted = no``, holds it
   for the admin rather than run it twice).

``duplicate_hooks`` counts hook runs that ran to their end beyond the first, per node,
over all parts: it must be 0.

    sudo .venv/bin/python bench/ha.py --nodes 300 [--lease-ttl 15] [--json-out FILE]

Needs root (network namespaces).  Nothing touches the root namespace's network.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, run_bench, use_test_support

LAB_INDEX = 80  # 198.18.80.0/24 (latency 77, reach 78, swarm 79); nodes in 198.19.64.0/18
SETTLED = ("registered", "interrupted")


def log(message: str) -> None:
    print(f"[ha {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class HABench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.failures: dict[str, list[str]] = {}
        self.figures: dict[str, Any] = {}
        self.duplicates: dict[str, int] = {}

    def run(self) -> None:
        use_test_support()
        from support.halab import HALab

        with HALab(self.workdir, index=LAB_INDEX) as ha:
            started = time.monotonic()
            ha.slots(self.args.nodes)
            log(f"{self.args.nodes} sshd on the farm in {time.monotonic() - started:.1f}s")
            if not self.args.no_sqlite:
                self.figures["sqlite"] = self._burst(ha, "sqlite", registrars=1, sqlite=True)
            self.figures["one"] = self._burst(ha, "one", registrars=1)
            self.figures["two"] = self._burst(ha, "two", registrars=2)
            self.figures["failover"] = self._failover(ha)

    def _scenario(self, ha: Any, name: str, *, resume: bool = False) -> Any:
        from support.halab import Scenario

        return Scenario(ha, name, resume=resume, lease_ttl=self.args.lease_ttl,
                        etcd_timeout=3.0)  # fmt: skip

    def _burst(
        self, ha: Any, name: str, *, registrars: int, sqlite: bool = False
    ) -> dict[str, Any]:
        s = self._scenario(ha, name)
        try:
            stations = [s.registrar(chr(ord("a") + i), start=False) for i in range(registrars)]
            for station in stations:
                if sqlite:
                    station.extra["autoreg"]["store"] = "sqlite"
                station.start_daemon()
            if sqlite:
                s.use_sqlite(stations[0])
            ids = s.announce(self.args.nodes)
            nodes = s.wait_nodes(
                lambda n: sum(r.state.value == "registered" for r in n.values()) == len(ids),
                f"{len(ids)} nodes registered", timeout=self.args.timeout, poll=1.0,
            )  # fmt: skip
            start = s.announced_at[0]
            done = [nodes[i].registered_at or 0.0 for i in ids]
            by = Counter(r.registrar for runs in s.completed().values() for r in runs)
            self._count_duplicates(s, name)
            lost = sum(st.daemon.log_text().count("not applied") for st in stations if st.daemon)
            result = {
                "registered_all_s": round(max(done) - start, 2),
                "registered_half_s": round(sorted(done)[len(done) // 2] - start, 2),
                "by_registrar": dict(by),
                "lost_races_logged": lost,
            }
            log(f"{name}: {result}")
            return result
        finally:
            s.close()

    def _failover(self, ha: Any) -> dict[str, Any]:
        count = min(self.args.nodes, self.args.failover_nodes)
        s = self._scenario(ha, "failover")
        try:
            s.pause_hooks(self.args.hook_pause)
            a = s.registrar("a")
            b = s.registrar("b")
            ids = s.announce(count)

            def of_a(rec: Any) -> bool:
                return rec.state.value == "registering" and (rec.claim_owner or "").startswith(
                    f"clc:{a.node_id}:"
                )

            nodes = s.wait_nodes(
                lambda n: any(of_a(r) and r.hook_started for r in n.values()),
                "a hook running under registrar a", timeout=120, poll=0.2,
            )  # fmt: skip
            held = [r.node_id for r in nodes.values() if of_a(r)]
            killed = time.time()
            a.daemon.kill_tree()
            log(f"killed registrar a holding {len(held)} claim(s)")
            s.pause_hooks(0)
            after = s.wait_nodes(
                lambda n: all(n.get(i) is not None and n[i].state.value in SETTLED for i in ids),
                "all settled after the failover", timeout=self.args.timeout, poll=0.5,
            )  # fmt: skip
            events = s.store.events()
            takeovers = [e.ts for e in events if e.node_id in held and e.ts > killed
                         and e.kind in ("interrupted", "recovered")
                         and e.origin.startswith(f"clc:{b.node_id}")]  # fmt: skip
            hooks = [r.at for r in s.hook_runs() if r.what == "start" and r.node_id in held
                     and r.registrar == b.host.name and r.at > killed]  # fmt: skip
            interrupted = sorted(i for i in ids if after[i].state.value == "interrupted")
            self._count_duplicates(s, "failover", may_miss=set(interrupted))
            done = max(after[i].updated for i in ids)
            if not takeovers:
                self.failures.setdefault("failover", []).append("no takeover event seen")
            result = {
                "nodes": count,
                "held_by_killed": len(held),
                "failover_s": round(min(takeovers) - killed, 2) if takeovers else None,
                "failover_hook_s": round(min(hooks) - killed, 2) if hooks else None,
                "failover_all_s": round(done - killed, 2),
                "interrupted": len(interrupted),
                "registered": sum(after[i].state.value == "registered" for i in ids),
            }
            log(f"failover: {result}")
            return result
        finally:
            s.close()

    def _count_duplicates(self, s: Any, name: str, *, may_miss: Any = ()) -> None:
        extra = {n: len(r) - 1 for n, r in s.completed().items() if len(r) > 1}
        missing = [n for n, r in s.completed().items() if not r and n not in may_miss]
        self.duplicates[name] = sum(extra.values())
        if extra:
            self.failures.setdefault("duplicates", []).append(f"{name}: {extra}")
        if missing:
            self.failures.setdefault("missing", []).append(f"{name}: {missing[:5]}")

    def report(self, wall: float) -> dict[str, Any]:
        one, two, fail = (self.figures.get(k, {}) for k in ("one", "two", "failover"))
        return {
            "nodes": self.args.nodes,
            "duplicate_hooks": sum(self.duplicates.values()),
            "registered_all_s_sqlite": self.figures.get("sqlite", {}).get("registered_all_s"),
            "registered_all_s_one": one.get("registered_all_s"),
            "registered_all_s_two": two.get("registered_all_s"),
            "failover_s": fail.get("failover_s"),
            "failover_hook_s": fail.get("failover_hook_s"),
            "failover_all_s": fail.get("failover_all_s"),
            "lease_ttl_s": self.args.lease_ttl,
            "sqlite": self.figures.get("sqlite"),
            "one": one,
            "two": two,
            "failover": fail,
            "duplicates_by_part": self.duplicates,
            "failures": self.failures,
            "wall_s": round(wall, 1),
            "environment": environment(etcd3gw=_version("etcd3gw"), etcd=_etcd_version()),
        }


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _etcd_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["/usr/bin/etcd", "--version"], capture_output=True, text=True,
                             timeout=10, check=False)  # fmt: skip
    except OSError:
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=300, help="nodes per part (default 300)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        help="the registrars' etcd_lease_ttl (default 15, the shipped one)",
    )
    parser.add_argument(
        "--failover-nodes", type=int, default=40, help="nodes in the failover part (default 40)"
    )
    parser.add_argument(
        "--hook-pause",
        type=float,
        default=3.0,
        help="seconds the hook sleeps in the failover part (default 3)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per part (default 600)")
    parser.add_argument(
        "--no-sqlite", action="store_true", help="skip the baseline: one registrar on sqlite"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    return run_bench(lambda workdir: HABench(workdir, args), prefix="autoreg-ha-",
                     keep=args.keep, json_out=args.json_out, log=log)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
