#!/usr/bin/env python3
"""``autoreg bootstrap`` of N bare machines: cold cache against warm cache; one JSON object.

On the namespace lab (``tests/support/bare.py``): a CLC, a CC registered by it
(the registrar of the NCs, ``trust = token``), and N machines that have sshd
and python3 and nothing else (a private ``/etc/autoreg``, ``/var/lib/autoreg``
and ``/var/cache/autoreg`` each).  Every round does the same work twice:

- ``cold``: the machines are as new, their caches empty; ``autoreg bootstrap
  --role nc`` over all N, timed from the command's start to its return, which
  is when the last machine is registered (``--converged-timeout`` only bounds a
  failure);
  ``all_started_s`` is the part until the last agent ran (connect, look, copy,
  configure, start: what the cache can shorten); the rest is registration;
- ``warm``: the agents are stopped, each machine's configuration and state
  wiped and its node forgotten by the CC, but the cache kept: the same command,
  which now copies nothing.

``warm_vs_cold`` is the median warm time over the median cold one (same run).
Every machine must end ``registered`` in every run; ``copied`` must be N cold
and 0 warm.

    sudo .venv/bin/python bench/bootstrap.py --machines 20 [--rounds 3] [--json-out FILE]

Needs root (network namespaces).  Nothing touches the root namespace's network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, run_bench, summarize, use_test_support

LAB_INDEX = 81  # 198.18.81.0/24 (latency 77, reach/unicast 78, swarm 79, ha 80)


def log(message: str) -> None:
    print(f"[bootstrap {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BootstrapBench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.failures: dict[str, list[str]] = {"cold": [], "warm": []}
        self.times: dict[str, list[float]] = {"cold": [], "warm": []}
        self.copied: dict[str, list[int]] = {"cold": [], "warm": []}
        self.bytes: dict[str, list[int]] = {"cold": [], "warm": []}
        self.bundle = ""
        #: mode -> per run, seconds until the last agent ran (copy and start done)
        self.started: dict[str, list[float]] = {"cold": [], "warm": []}

    def run(self) -> None:
        use_test_support()
        from support import netlab
        from support.autoreg_lab import AutoregLab
        from support.bare import MOUNTS, bootstrap_cli, cc_registrar, make_machine

        with netlab.mountpoints(MOUNTS), netlab.Lab(self.workdir / "lab", index=LAB_INDEX) as lab:
            alab = AutoregLab(lab)
            cc = cc_registrar(alab)
            machines = [make_machine(alab, f"m{i}", cc) for i in range(self.args.machines)]
            ips = [m.ip for m in machines]
            flags = ["--role", "nc", "--cluster", "c1", "--accept-new", "--parallel",
                     str(self.args.parallel), "--converged-timeout", "60"]  # fmt: skip
            for round_ in range(1, self.args.rounds + 1):
                for mode in ("cold", "warm"):
                    started = time.monotonic()
                    code, summary, _ = bootstrap_cli(cc, *flags, *ips, timeout=600)
                    took = time.monotonic() - started
                    self.bundle = str(summary.get("bundle", ""))
                    targets = summary.get("targets", [])
                    assert isinstance(targets, list)
                    bad = [t for t in targets if t.get("state") != "registered"]
                    if code != 0 or bad:
                        self.failures[mode].append(f"round {round_}: exit {code}, {bad[:2]}")
                    self.times[mode].append(took)
                    started_after = [float(t["started_after"] or 0) for t in targets]
                    self.started[mode].append(max(started_after, default=0.0))
                    self.copied[mode].append(int(summary.get("copied", -1)))  # type: ignore[call-overload]
                    self.bytes[mode].append(int(summary.get("copied_bytes", -1)))  # type: ignore[call-overload]
                    log(f"round {round_} {mode}: {took:.2f} s, copied {self.copied[mode][-1]}")
                    # Reset: agents stopped, machines and nodes forgotten; the cache only
                    # survives into the warm run.
                    for m in machines:
                        m.stop_agent()
                    for t in targets:
                        cc.cli("forget", "--yes", str(t["node_id"]), check=False)
                    for m in machines:
                        m.wipe(cache=mode == "warm")

    def report(self, wall: float) -> dict[str, Any]:
        cold, warm = summarize(self.times["cold"]), summarize(self.times["warm"])
        return {
            "benchmark": "bootstrap",
            "machines": self.args.machines,
            "parallel": self.args.parallel,
            "rounds": self.args.rounds,
            "bundle": self.bundle,
            "cold_s": cold,
            "warm_s": warm,
            "warm_vs_cold": round(warm["median"] / cold["median"], 3) if cold["median"] else None,
            "all_started_s": {mode: summarize(v) for mode, v in self.started.items()},
            "copied": self.copied,
            "copied_bytes": self.bytes,
            "failures": self.failures,
            "wall_s": round(wall, 1),
            "environment": environment(),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--machines", type=int, default=20, help="bare machines")
    p.add_argument("--rounds", type=int, default=3, help="cold+warm pairs")
    p.add_argument("--parallel", type=int, default=10, help="bootstrap --parallel")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.machines < 1 or args.rounds < 1 or args.parallel < 1:
        p.error("--machines, --rounds and --parallel must be at least 1")
    return run_bench(lambda workdir: BootstrapBench(workdir, args), prefix="autoreg-bootstrap-",
                     keep=args.keep, json_out=args.json_out, log=log)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
