"""Part 3 of bench/reach.py: ``autoreg exec`` against plain OpenSSH, direct and via a proxy.

``autoreg exec`` verifies every node's host key over its path and runs the
command over that same connection (paramiko).  The reference is what an admin
would otherwise run: plain OpenSSH with the ``ssh_config`` autoreg writes per
node, whose known_hosts pins the verified key (``StrictHostKeyChecking yes``),
one node after another and P at a time.  That plain ssh, P at a time, is also
the floor of the other design (OpenSSH doing the verification through
autoreg's known_hosts, one connection per node): that design is exactly this
command plus autoreg's own start-up.

Every node's sshd logs at VERBOSE, one ``Connection from`` line per accepted
connection, so the logs count the SSH handshakes each variant costs: per node,
and on the proxy node for a cluster behind it.

Kept free of heavy imports: ``plain_ssh_main`` runs as a helper process inside
the controller's namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import resource
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from _common import percentile, summarize

__all__ = ["ExecPart", "plain_ssh", "plain_ssh_main"]

SSH_TIMEOUT = 30.0
EXEC_TIMEOUT = 300.0
FLEET_TIMEOUT = 180.0
#: The key exchange paramiko negotiates with OpenSSH 9.2 (which lacks ML-KEM): plain ssh
#: forced to it shows how much of OpenSSH's cost is its default (sntrup761x25519).
CURVE25519 = "curve25519-sha256"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- helper role: plain OpenSSH over many nodes (controller's namespace) -----------------


def plain_ssh(config: str, kex: str | None = None) -> dict[str, Any]:
    """``ssh -F CONFIG node true``: exit status and wall time."""
    options = ["-o", f"KexAlgorithms={kex}"] if kex else []
    started = time.perf_counter()
    try:
        r = subprocess.run(
            ["ssh", "-F", config, *options, "node", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SSH_TIMEOUT,
            check=False,
        )
        code, err = r.returncode, r.stderr.decode(errors="replace")[-300:]
    except subprocess.TimeoutExpired:
        code, err = None, f"timed out after {SSH_TIMEOUT}s"
    return {"config": config, "rc": code, "s": time.perf_counter() - started, "err": err}


def plain_ssh_main(argv: list[str]) -> int:
    """``ssh -F CONFIG node true`` for each CONFIG, ``--parallel`` at a time (1: in turn)."""
    p = argparse.ArgumentParser(prog="reach.py _plain_ssh")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--kex", help="OpenSSH KexAlgorithms for the node connections")
    p.add_argument("configs", nargs="+")
    args = p.parse_args(argv)

    cpu = _children_cpu()
    started = time.perf_counter()
    if args.parallel <= 1:
        results = [plain_ssh(c, args.kex) for c in args.configs]
    else:
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda c: plain_ssh(c, args.kex), args.configs))
    wall = time.perf_counter() - started
    out = {"wall": wall, "client_cpu": _children_cpu() - cpu, "results": results}
    print(json.dumps(out), flush=True)
    return 0


# -- the part itself -----------------------------------------------------------------------


class _Connections:
    """``Connection from`` lines each station's sshd logs from now on."""

    def __init__(self, stations: Iterable[Any]) -> None:
        self._stations = list(stations)
        self._offsets = [len(s.sshd.proc.log_text()) for s in self._stations]

    def per_station(self, source: str = "") -> list[int]:
        needle = "Connection from " + (f"{source} " if source else "")
        return [
            s.sshd.proc.log_text()[offset:].count(needle)
            for s, offset in zip(self._stations, self._offsets, strict=True)
        ]


def _counts(values: list[int]) -> dict[str, int]:
    return {"min": min(values), "max": max(values), "total": sum(values)}


class ExecPart:
    """Mixed into reach.Bench: uses its lab, controller, proxy and CLI helpers."""

    args: Any
    ctl: Any
    alab: Any
    inner: Any
    gw: Any
    token: str
    S: Any
    fleet: dict[str, Any] | None
    proxy_fleet: dict[str, Any] | None
    roles: dict[str, str]
    cluster: str
    # and its methods autoreg(), helper(), add_node(), log()

    def part_exec(self) -> None:
        """N direct nodes: exec, plain ssh in turn, P at a time, P at a time with curve25519."""
        role = self.roles["fleet"]
        fleet, registration = self.fleet_up(role, self.args.fleet, prefix="f")
        configs = [self.ssh_config(st) for st in fleet]
        # The per-node ssh_config as the daemon wrote it at registration; every `autoreg
        # exec` rewrites it (round 1 runs exec first, so plain ssh always uses exec's).
        mux_before = sum("ControlMaster" in Path(c).read_text() for c in configs)
        variants = ["exec", "plain_sequential", "plain_parallel", "plain_parallel_curve25519"]
        rounds: list[dict[str, Any]] = []
        connections: dict[str, list[int]] = {}
        mux = -1
        for index in range(self.args.exec_rounds):
            order = variants if index % 2 == 0 else variants[::-1]  # drift hits all alike
            row: dict[str, Any] = {}
            for what in order:
                counted = _Connections(fleet)
                if what == "exec":
                    row[what] = self.run_exec(role, len(fleet))
                else:
                    par = 1 if what == "plain_sequential" else self.args.parallel
                    kex = CURVE25519 if what.endswith("curve25519") else None
                    row[what] = self.run_plain(configs, par, kex)
                if index == 0:
                    connections[what] = counted.per_station()
                    if what == "exec":
                        mux = sum("ControlMaster" in Path(c).read_text() for c in configs)
            rounds.append(row)
            self.log(
                f"exec round {index + 1}/{self.args.exec_rounds}: autoreg exec "
                f"{row['exec']['wall']:.2f} s; plain ssh in turn "
                f"{row['plain_sequential']['wall']:.2f} s, {self.args.parallel} at a time "
                f"{row['plain_parallel']['wall']:.2f} s ({CURVE25519}: "
                f"{row['plain_parallel_curve25519']['wall']:.2f} s)"
            )
        for st in fleet:
            st.sshd.stop()
        med = {v: percentile([r[v]["wall"] for r in rounds], 0.5) for v in variants}
        self.fleet = {
            "nodes": len(fleet),
            "parallel": self.args.parallel,
            "rounds": len(rounds),
            "command": " ".join(("autoreg", *self.exec_args(role))),
            "registration": registration,
            "exec_wall_s": summarize([r["exec"]["wall"] for r in rounds], 3),
            "plain_ssh_sequential_wall_s": summarize(
                [r["plain_sequential"]["wall"] for r in rounds], 3
            ),
            "plain_ssh_parallel_wall_s": summarize(
                [r["plain_parallel"]["wall"] for r in rounds], 3
            ),
            "plain_ssh_parallel_curve25519_wall_s": summarize(
                [r["plain_parallel_curve25519"]["wall"] for r in rounds], 3
            ),
            "exec_vs_plain_ssh": round(med["exec"] / med["plain_parallel"], 2),
            "exec_vs_plain_ssh_curve25519": round(
                med["exec"] / med["plain_parallel_curve25519"], 2
            ),
            "speedup_exec_vs_sequential": round(med["plain_sequential"] / med["exec"], 2),
            "speedup_plain_parallel_vs_sequential": round(
                med["plain_sequential"] / med["plain_parallel"], 2
            ),
            "client_cpu_s": {
                v: round(percentile([r[v]["client_cpu"] for r in rounds], 0.5), 3) for v in variants
            },
            "ssh_connections_per_node": {v: _counts(c) for v, c in connections.items()},
            "exec_per_node_s": _brief([x for r in rounds for x in r["exec"]["per_node"]]),
            "plain_ssh_per_node_sequential_s": _brief(
                [x for r in rounds for x in r["plain_sequential"]["per_node"]]
            ),
            "plain_ssh_per_node_parallel_s": _brief(
                [x for r in rounds for x in r["plain_parallel"]["per_node"]]
            ),
            "exec_paths": sorted({p for r in rounds for p in r["exec"]["paths"]}),
            "ssh_configs_with_connection_sharing": {
                "as_written_by_the_daemon": mux_before,
                "after_autoreg_exec": mux,
            },
        }
        if self.args.samples:
            self.fleet["round_walls"] = [
                {k: round(v["wall"], 3) for k, v in r.items()} for r in rounds
            ]

    def part_proxy_exec(self) -> None:
        """N nodes behind the one proxy: exec against plain ssh (ProxyCommand), P at a time."""
        role = self.roles["proxy_fleet"]
        n = self.args.proxy_fleet
        fleet, registration = self.fleet_up(role, n, prefix="q", cluster=self.cluster)
        configs = [self.ssh_config(st) for st in fleet]
        rounds: list[dict[str, Any]] = []
        for index in range(self.args.exec_rounds):
            order = ["exec", "plain_parallel"] if index % 2 == 0 else ["plain_parallel", "exec"]
            row: dict[str, Any] = {}
            for what in order:
                counted, at_proxy = _Connections(fleet), _Connections([self.gw])
                if what == "exec":
                    row[what] = self.run_exec(role, n)
                else:
                    row[what] = self.run_plain(configs, self.args.parallel)
                row[what]["per_node_connections"] = _counts(counted.per_station())
                (row[what]["proxy_handshakes"],) = at_proxy.per_station(self.ctl.host.ip)
            rounds.append(row)
            self.log(
                f"proxy exec round {index + 1}/{self.args.exec_rounds}, {n} nodes behind "
                f"{self.gw.host.ip}: autoreg exec {row['exec']['wall']:.2f} s, "
                f"{row['exec']['proxy_handshakes']} proxy handshake(s); plain ssh "
                f"{self.args.parallel} at a time {row['plain_parallel']['wall']:.2f} s, "
                f"{row['plain_parallel']['proxy_handshakes']} proxy handshake(s)"
            )
        for st in fleet:
            st.sshd.stop()
        exec_med = percentile([r["exec"]["wall"] for r in rounds], 0.5)
        plain_med = percentile([r["plain_parallel"]["wall"] for r in rounds], 0.5)
        self.proxy_fleet = {
            "nodes": n,
            "proxy": self.gw.host.ip,
            "parallel": self.args.parallel,
            "rounds": len(rounds),
            "command": " ".join(("autoreg", *self.exec_args(role))),
            "registration": registration,
            "exec_wall_s": summarize([r["exec"]["wall"] for r in rounds], 3),
            "plain_ssh_parallel_wall_s": summarize(
                [r["plain_parallel"]["wall"] for r in rounds], 3
            ),
            "exec_vs_plain_ssh": round(exec_med / plain_med, 2),
            "proxy_handshakes": {
                "exec": [r["exec"]["proxy_handshakes"] for r in rounds],
                "plain_ssh_parallel": [r["plain_parallel"]["proxy_handshakes"] for r in rounds],
            },
            "ssh_connections_per_node": {
                "exec": [r["exec"]["per_node_connections"] for r in rounds],
                "plain_ssh_parallel": [r["plain_parallel"]["per_node_connections"] for r in rounds],
            },
            "client_cpu_s": {
                "exec": round(percentile([r["exec"]["client_cpu"] for r in rounds], 0.5), 3),
                "plain_ssh_parallel": round(
                    percentile([r["plain_parallel"]["client_cpu"] for r in rounds], 0.5), 3
                ),
            },
            "exec_paths": sorted({p for r in rounds for p in r["exec"]["paths"]}),
        }

    def fleet_up(
        self, role: str, n: int, *, prefix: str, cluster: str | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """N hosts (sshd only), queued into the running daemon and registered.

        With ``cluster`` (the proxy's) they sit on the inner network, behind the proxy.
        """
        from registration._admin import manual_register, store_for
        from registration._config import load_config
        from registration.protocol import Announcement

        ctl = self.ctl
        started = time.monotonic()
        extra = {"cluster": cluster, "lab": self.inner} if cluster else {}
        fleet = [self.add_node(f"{prefix}{i:02d}", role, f"{prefix}-{self.token}-{i:02d}", **extra)
                 for i in range(n)]  # fmt: skip
        self.log(f"exec: {n} hosts with sshd up in {time.monotonic() - started:.1f} s")
        # The library call behind `autoreg register`, in-process: it touches the store only,
        # and this saves an interpreter start per node.
        ctl.write_config()
        config = load_config(ctl.conf)

        async def queue_all() -> None:
            async with store_for(config) as store:
                for st in fleet:
                    ann = Announcement(
                        node_id=st.node_id, role=role, ip=st.host.ip, port=st.sshd.port,
                        fingerprint=st.sshd.fingerprint, name=st.host.name, cluster=cluster,
                    )  # fmt: skip
                    await manual_register(config, store, ann)

        asyncio.run(queue_all())
        ids = {st.node_id for st in fleet}

        def pending() -> list[str]:
            return sorted(
                i for i in ids if (r := ctl.node(i)) is None or r.state is not self.S.REGISTERED
            )

        deadline = time.monotonic() + FLEET_TIMEOUT
        while pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        if pending():
            raise TimeoutError(f"not registered after {FLEET_TIMEOUT}s: {pending()[:5]} …")
        queued, took = [], []
        for i in ids:
            events = {e.kind: e.ts for e in reversed(ctl.events(i))}  # the first of each kind
            queued.append(events["manual"])
            took.append(events["registered"] - events["manual"])
        span = max(q + t for q, t in zip(queued, took, strict=True)) - min(queued)
        self.log(f"exec: {n} nodes registered {span:.2f} s after the first was queued")
        return fleet, {
            "nodes": n,
            "queued_to_last_registered_s": round(span, 3),
            "per_node_queued_to_registered_s": _brief(took),
            "max_parallel": config.controller.max_parallel,
        }

    def ssh_config(self, station: Any) -> str:
        return str(self.ctl.state_dir / "nodes" / station.node_id / "ssh_config")

    def exec_args(self, role: str) -> tuple[str, ...]:
        return ("exec", "--role", role, "--parallel", str(self.args.parallel),
                "--json", "--", "true")  # fmt: skip

    def run_exec(self, role: str, n: int) -> dict[str, Any]:
        cpu = _children_cpu()
        rc, out, err, wall = self.autoreg(*self.exec_args(role), timeout=EXEC_TIMEOUT)
        cpu = _children_cpu() - cpu  # the whole autoreg process, interpreter start included
        try:
            results = json.loads(out)  # --json: one clean document
        except ValueError:
            raise RuntimeError(f"autoreg exec exited {rc}: {out[-500:]} {err[-1500:]}") from None
        bad = [r for r in results if r["returncode"] != 0 or r["error"]]
        if rc != 0 or bad or len(results) != n:
            raise RuntimeError(f"autoreg exec exited {rc}; {len(bad)} failed: {bad[:3]}")
        return {
            "wall": wall,
            "client_cpu": cpu,
            "per_node": [r["duration"] for r in results],
            "paths": sorted({r["path"] for r in results}),
        }

    def run_plain(
        self, configs: list[str], parallel: int, kex: str | None = None
    ) -> dict[str, Any]:
        kex_args = ("--kex", kex) if kex else ()
        out = self.helper(
            "_plain_ssh", "--parallel", str(parallel), *kex_args, *configs, timeout=EXEC_TIMEOUT
        )
        bad = [r for r in out["results"] if r["rc"] != 0]
        if bad:
            raise RuntimeError(f"plain ssh failed on {len(bad)} node(s): {bad[:3]}")
        return {
            "wall": out["wall"],
            "client_cpu": out["client_cpu"],
            "per_node": [r["s"] for r in out["results"]],
        }


def _brief(values: list[float], digits: int = 4) -> dict[str, Any]:
    full = summarize(values, digits)
    return {"n": full["n"], "median": full["median"], "p90": full["p90"], "max": full["max"]}
