#!/usr/bin/env python3
"""Reaching nodes: direct, reverse tunnel, proxy; tunnel recovery; exec fan-out.

Everything runs on a real (namespaced) network: one registrar (a real
``python -m registration daemon``, role ``clc``, no hooks) with the controller's
callback sshd (real OpenSSH with autoreg's ``Match User`` block), and nodes
with a real sshd each.  Three parts, each printed in one JSON object:

1. ``registration``: time from the moment the daemon learns of a node to
   ``registered`` in its state store (the store's own event timestamps), over
   each path.  *direct*: the node announces (``autoreg announce``) and the
   controller dials it.  *tunnel*: the node's inbound TCP 22 is dropped; it runs
   ``autoreg callback`` (``ssh -N -R`` to the callback sshd) and announces; the
   direct attempt costs ``connect_timeout`` first.  *proxy*: the node sits on an
   inner network only a two-homed proxy host reaches; ``autoreg register``
   queues it (``[cluster:inner] proxy = …``).  Each trial uses a fresh node.
   After each registration the same node is re-verified over its remembered
   path (``prepare_access``, what ``autoreg ssh``/``exec`` do first), and
   ``autoreg ssh NODE -- true`` and plain ``ssh -F ssh_config node true`` are
   timed.
2. ``tunnel_recovery``: the callback sshd is stopped with its sessions (a crash
   or reboot of the controller's sshd) and started again with the same host
   key; the time until ``autoreg tunnel list --json`` shows a live port for the
   node again.
3. ``exec``: ``autoreg exec --parallel P -- true`` over N direct nodes, against
   plain ``ssh -F nodes/<id>/ssh_config node true`` one node after another and P
   at a time (``exec_vs_plain_ssh``: exec over plain ssh P at a time, same run);
   then over M nodes behind the proxy, counting the proxy's SSH handshakes
   (``bench/_reach_exec.py``).

    sudo python bench/reach.py [--trials K] [--json-out FILE]

Needs root (network namespaces).  Nothing touches the root namespace's network:
every command that dials out runs inside the controller's namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, percentile, run_bench, summarize, use_test_support
from _reach_exec import ExecPart, plain_ssh, plain_ssh_main

SELF = str(Path(__file__).resolve())

PATHS = ("direct", "tunnel", "proxy")
LEARNED_FROM = {
    "direct": "the announcement (announced event)",
    "tunnel": "the announcement (announced event)",
    "proxy": "autoreg register (manual event)",
}
#: Roles: one per path (so events and `exec --role` select cleanly), all registered by
#: clc, any number of them (`unique = none`); the proxied one has a cluster.
ROLES = {
    "direct": "rdirect",
    "tunnel": "rtunnel",
    "proxy": "rproxy",
    "fleet": "rfleet",
    "proxy_fleet": "rpfleet",
}
REGISTRAR_ROLE = "clc"
CLUSTER = "inner"
#: Lab indices (198.18.<index>.0/24), inside the labs' own namespaces only.  The inner
#: network's index differs from the outer one's, so the controller has no route to it.
OUTER_INDEX = 78
INNER_INDEX = 252
#: [controller] connect_timeout unless --connect-timeout (the shipped default is 10 s).
CONNECT_TIMEOUT_S = 2.0

#: Bounds (seconds) on every wait, so a broken build fails instead of hanging.
TRIAL_TIMEOUT = 40.0
CLI_TIMEOUT = 60.0
DOWN_WAIT = 10.0
RECOVERY_TIMEOUT = 40.0
HELPER_LIFETIME = 120.0


def log(message: str) -> None:
    print(f"[reach {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- helper role: re-verify a node over its remembered path (controller's namespace) ----


def reverify_main(argv: list[str]) -> int:
    """Time ``prepare_access`` (what `autoreg ssh`/`exec` do per node before ssh runs)."""
    p = argparse.ArgumentParser(prog="reach.py _reverify")
    p.add_argument("--conf", type=Path, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--plain", metavar="SSH_CONFIG", help="then time plain ssh -F SSH_CONFIG")
    args = p.parse_args(argv)
    from registration._admin import store_for
    from registration._config import load_config
    from registration._remote import prepare_access

    config = load_config(args.conf)
    rounds: list[dict[str, Any]] = []

    async def reverify() -> None:
        async with store_for(config) as store:
            for _ in range(args.count):
                rec = await store.get(args.node)
                assert rec is not None, args.node
                started = time.perf_counter()
                await prepare_access(config, store, rec)
                took = time.perf_counter() - started
                after = await store.get(args.node)
                rounds.append(
                    {
                        "s": took,
                        "path_before": rec.path,
                        "path_after": after.path if after else None,
                    }
                )

    asyncio.run(reverify())
    # prepare_access just rewrote the node's ssh_config: plain ssh follows the same path.
    plain = plain_ssh(args.plain) if args.plain else None
    print(json.dumps({"reverify": rounds, "plain": plain}), flush=True)
    return 0


# -- helper role: the tunnel watcher (controller's namespace) ----------------------------


def watch_main(argv: list[str]) -> int:
    """After a callback-sshd stop: when the tunnel ports are down, when the sshd listens
    again, and when the first port gives an SSH banner again (time.time(), 20 ms polls)."""
    p = argparse.ArgumentParser(prog="reach.py _watch")
    p.add_argument("--sshd", required=True, help="HOST:PORT of the callback sshd")
    p.add_argument("--ports", required=True, help="the node's tunnel ports, comma-separated")
    p.add_argument("--deadline", type=float, default=60.0)
    args = p.parse_args(argv)
    host, _, port = args.sshd.rpartition(":")
    ports = [int(x) for x in args.ports.split(",")]
    deadline = time.monotonic() + min(args.deadline, HELPER_LIFETIME)

    def emit(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def banner(p: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", p), timeout=1) as s:
                s.settimeout(1)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def listening() -> bool:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    stage = "down"
    while time.monotonic() < deadline:
        if stage == "down":
            if not any(banner(p) for p in ports):
                emit(event="down", t=time.time())
                stage = "sshd"
        elif stage == "sshd":
            if listening():
                emit(event="sshd_up", t=time.time())
                stage = "banner"
        else:
            live = [p for p in ports if banner(p)]
            if live:
                emit(event="banner", t=time.time(), port=live[0])
                return 0
        time.sleep(0.02)
    emit(event="deadline", stage=stage)
    return 1


# -- the benchmark ------------------------------------------------------------------------


def _poll(fn: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _brief(values: list[float], digits: int = 4) -> dict[str, Any]:
    full = summarize(values, digits)
    return {"n": full["n"], "median": full["median"], "p90": full["p90"], "max": full["max"]}


def _r(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _r(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_r(v, digits) for v in value]
    return value


class Bench(ExecPart):
    roles = ROLES
    cluster = CLUSTER
    log = staticmethod(log)

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.token = secrets.token_hex(2)
        self.loadavg = _loadavg()
        self.samples: list[dict[str, Any]] = []
        self.failures: dict[str, list[str]] = {
            k: [] for k in (*args.paths, "recovery", "exec", "proxy_exec")
        }
        self.recovery: dict[str, Any] | None = None
        self.fleet: dict[str, Any] | None = None
        self.proxy_fleet: dict[str, Any] | None = None
        self._seq = 0

    # -- set-up ---------------------------------------------------------------------------

    def run(self) -> None:
        use_test_support()
        from registration.state import NodeState
        from support.autoreg_lab import AutoregLab, autoreg_argv
        from support.netlab import Lab

        self.S = NodeState
        self.autoreg_argv = autoreg_argv
        with (
            Lab(self.workdir / "lab", index=OUTER_INDEX) as lab,
            Lab(self.workdir / "inner", index=INNER_INDEX) as inner,
        ):
            self.inner = inner
            alab = self.alab = AutoregLab(lab)
            ctl = self.ctl = alab.registrar("ctl", REGISTRAR_ROLE)
            ctl.extra.update(self.role_sections())
            ctl.extra.setdefault("controller", {})["connect_timeout"] = (
                f"{self.args.connect_timeout:g}"
            )
            # The proxy: an ordinary host with sshd on both networks; it never announces.
            gw = self.gw = alab.node("gw", "walrus", node_id=f"gw-{self.token}")
            self.gw_inner_ip = inner.attach(gw.host)
            assert gw.sshd is not None
            ctl.extra[f"cluster:{CLUSTER}"] = {
                "proxy": gw.host.ip,
                "proxy_fingerprint": gw.sshd.fingerprint,
                "proxy_user": "root",
            }
            self.callback_sshd = ctl.start_callback_sshd()
            ctl.start_daemon()
            log(f"registrar up in {ctl.host.netns} ({ctl.host.ip}); workdir {self.workdir}")
            self.part_registration()
            if self.args.recovery:
                self.guard("recovery", self.part_recovery)
            if self.args.exec:
                self.guard("exec", self.part_exec)
            if self.args.exec and self.args.proxy_fleet:
                self.guard("proxy_exec", self.part_proxy_exec)

    @staticmethod
    def role_sections() -> dict[str, dict[str, str]]:
        """The bench's [role:…] sections: every host's configuration needs them."""
        sections = {}
        for path, role in ROLES.items():
            section = {"registered_by": REGISTRAR_ROLE, "unique": "none"}
            if path in ("proxy", "proxy_fleet"):
                section["cluster"] = "yes"
            sections[f"role:{role}"] = section
        return sections

    def add_node(self, name: str, role: str, node_id: str, **kw: Any) -> Any:
        station = self.alab.node(name, role, node_id=node_id, **kw)
        station.extra.update(self.role_sections())
        station.write_config()
        return station

    def guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.failures[what].append(f"{exc}"[:2000])
            log(f"{what} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
            self._check_daemon(exc)

    def _check_daemon(self, exc: Exception) -> None:
        daemon = self.ctl.daemon
        if daemon is not None and not daemon.alive():
            raise RuntimeError("the daemon died:\n" + daemon.log_text()[-3000:]) from exc

    def ctl_run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        """Run argv inside the controller's namespace (never raises on exit status)."""
        return self.ctl.host.run(argv, timeout=timeout, check=False)

    def autoreg(self, *args: str, timeout: float = CLI_TIMEOUT) -> tuple[int, str, str, float]:
        """The autoreg CLI inside the controller's namespace: rc, stdout, stderr, wall."""
        self.ctl.write_config()
        started = time.perf_counter()
        r = self.ctl_run(self.autoreg_argv("-c", str(self.ctl.conf), *args), timeout)
        wall = time.perf_counter() - started
        return (
            r.returncode,
            r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace"),
            wall,
        )

    def helper(self, name: str, *args: str, timeout: float = CLI_TIMEOUT) -> Any:
        r = self.ctl_run([sys.executable, SELF, name, *args], timeout)
        lines = r.stdout.decode(errors="replace").strip().splitlines()
        if r.returncode != 0 or not lines:
            raise RuntimeError(
                f"helper {name} exited {r.returncode}: {r.stderr.decode(errors='replace')[-1500:]}"
            )
        return json.loads(lines[-1])

    def node_id(self, path: str, warm: bool, index: int) -> str:
        return f"r-{self.token}-{path[0]}{'w' if warm else 't'}{index:02d}"

    # -- part 1: registration over each path ----------------------------------------------

    def part_registration(self) -> None:
        plan = [(p, True, i) for i in range(self.args.warmup) for p in self.args.paths]
        plan += [(p, False, i) for i in range(self.args.trials) for p in self.args.paths]
        for path, warm, index in plan:
            node_id = self.node_id(path, warm, index)
            try:
                sample = self.trial(path, node_id, warm)
            except Exception as exc:  # record, show, go on with the next trial
                self.failures[path].append(f"{node_id}: {exc}"[:2000])
                log(f"{path} {node_id} FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                self._check_daemon(exc)
            else:
                self.samples.append(sample)
                log(
                    f"{path:6} {'warmup' if warm else f'{index + 1}/{self.args.trials}'}: "
                    f"registered in {sample['registration_s']:6.3f} s "
                    f"(to registering {sample['to_registering_s']:.3f}, ssh+receipt "
                    f"{sample['registering_to_registered_s']:.3f}), re-verify "
                    f"{sample['reverify_s']:.3f} s, autoreg ssh {sample['autoreg_ssh_s']:.3f} s, "
                    f"plain ssh {sample['plain_ssh_s']:.3f} s, path {sample['path']}"
                )

    def trial(self, path: str, node_id: str, warm: bool) -> dict[str, Any]:
        self._seq += 1
        role = ROLES[path]
        name = f"{path[0]}{self._seq}"
        if path == "proxy":
            station = self.add_node(name, role, node_id, cluster=CLUSTER, lab=self.inner)
        else:
            station = self.add_node(name, role, node_id)
        assert station.sshd is not None
        try:
            ports: list[int] = []
            if path == "tunnel":
                ports = self.alab.tunnel(station, self.ctl)
                station.host.drop_inbound_tcp(station.sshd.port)  # nobody dials this node
                station.start_callback()  # waits for "tunnel up"
            if path == "proxy":
                rc, out, err, _ = self.autoreg(
                    "register", "--role", role, "--cluster", CLUSTER, "--ip", station.host.ip,
                    "--fingerprint", station.sshd.fingerprint, "--id", node_id,
                    "--name", name, "--wait", str(TRIAL_TIMEOUT), timeout=TRIAL_TIMEOUT + 30,
                )  # fmt: skip
                if rc != 0:
                    raise RuntimeError(f"autoreg register exited {rc}: {out}{err}")
            else:
                station.start_announcer()
            rec = self.ctl.wait_state(node_id, self.S.REGISTERED, timeout=TRIAL_TIMEOUT)
            events: dict[str, float] = {}
            for event in self.ctl.events(node_id):
                events.setdefault(event.kind, event.ts)
            learned = events["manual" if path == "proxy" else "announced"]
            # The remembered path, again: what `autoreg ssh`/`exec` do before ssh runs;
            # then plain ssh with the ssh_config that wrote, then `autoreg ssh` whole.
            config = self.ctl.state_dir / "nodes" / node_id / "ssh_config"
            got = self.helper(
                "_reverify", "--conf", str(self.ctl.conf), "--node", node_id, "--count", "2",
                "--plain", str(config),
            )  # fmt: skip
            reverify, plain = got["reverify"], got["plain"]
            if plain["rc"] != 0:
                raise RuntimeError(f"plain ssh -F {config} failed: {plain}")
            rc, _out, err, ssh_wall = self.autoreg("ssh", node_id, "--", "true")
            if rc != 0:
                raise RuntimeError(f"autoreg ssh {node_id} -- true exited {rc}: {err[-800:]}")
        finally:
            for proc in (station.announcer, station.callback):
                if proc is not None:
                    proc.terminate(10)
            station.sshd.stop()
        return {
            "path_kind": path,
            "node_id": node_id,
            "warmup": warm,
            "path": rec.path,
            "tunnel_ports": ports,
            "registration_s": events["registered"] - learned,
            "to_registering_s": events["registering"] - learned,
            "registering_to_registered_s": events["registered"] - events["registering"],
            "reverify_s": percentile([r["s"] for r in reverify], 0.5),
            "reverify_paths": sorted({r["path_after"] for r in reverify}),
            "autoreg_ssh_s": ssh_wall,
            "plain_ssh_s": plain["s"],
        }

    # -- part 2: tunnel recovery after the callback sshd restarts ------------------------

    def part_recovery(self) -> None:
        ctl = self.ctl
        node_id = f"r-{self.token}-rec"
        station = self.add_node("rec", ROLES["tunnel"], node_id)
        assert station.sshd is not None
        ports = self.alab.tunnel(station, ctl)
        station.host.drop_inbound_tcp(station.sshd.port)
        station.start_callback()
        station.start_announcer()
        rec = ctl.wait_state(node_id, self.S.REGISTERED, timeout=TRIAL_TIMEOUT)
        log(f"recovery: node {node_id} registered over {rec.path}")

        # A plain restart of the listener (`systemctl restart ssh`): sessions live on.
        self.callback_sshd.stop()
        self.callback_sshd = ctl.start_callback_sshd(reuse_key=True)
        rc, out, _err, _wall = self.autoreg("tunnel", "list", "--json")
        plain_restart_live = rc == 0 and self._live(out, node_id)
        log(f"recovery: listener-only restart, tunnel still live: {plain_restart_live}")

        trials: list[dict[str, Any]] = []
        for index in range(self.args.trials):
            try:
                trial = self.recovery_trial(station, node_id, ports)
            except Exception as exc:
                self.failures["recovery"].append(f"trial {index + 1}: {exc}"[:2000])
                log(f"recovery {index + 1} FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                self._check_daemon(exc)
                if self.callback_sshd is None or not self.callback_sshd.proc.alive():
                    self.callback_sshd = ctl.start_callback_sshd(reuse_key=True)
                continue
            trials.append(trial)
            log(
                f"recovery {index + 1}/{self.args.trials}: sshd down {trial['sshd_down_s']:.2f} s; "
                f"after it listens: banner {trial['banner_s']:.3f} s, tunnel list "
                f"{trial['tunnel_list_s']:.3f} s ({trial['tunnel_list_calls']} calls); "
                f"re-verify {trial['reverify_s']:.3f} s {trial['path_before']} -> "
                f"{trial['path_after']}"
            )
        for proc in (station.announcer, station.callback):
            if proc is not None:
                proc.terminate(10)
        station.sshd.stop()
        cb = station.extra["callback"]
        self.recovery = {
            "trials": len(trials),
            "listener_only_restart_tunnel_stayed_live": plain_restart_live,
            "sshd_down_s": _brief([t["sshd_down_s"] for t in trials]),
            "tunnel_list_s": summarize([t["tunnel_list_s"] for t in trials]),
            "banner_s": summarize([t["banner_s"] for t in trials]),
            "tunnel_list_call_s": _brief([c for t in trials for c in t["call_s"]]),
            "reconnect_attempts_per_restart": _brief(
                [float(t["reconnects_logged"]) for t in trials], 1
            ),
            "port_rotated": sum(t["rotated"] for t in trials),
            "path_changed": sum(t["path_before"] != t["path_after"] for t in trials),
            # The first re-verification after the restart (what `autoreg ssh`/`exec` do),
            # split by whether the node came back on the port its recorded path names.
            "reverify_after_s": summarize([t["reverify_s"] for t in trials]),
            "reverify_after_same_port_s": [
                round(t["reverify_s"], 3) for t in trials if t["path_before"] == t["path_after"]
            ],
            "reverify_after_port_change_s": [
                round(t["reverify_s"], 3) for t in trials if t["path_before"] != t["path_after"]
            ],
            "callback_settings": {
                "retry_initial_s": float(cb["retry_initial"]),
                "retry_max_s": float(cb["retry_max"]),
                "keepalive_interval_s": float(cb["keepalive_interval"]),
                "keepalive_count": int(cb["keepalive_count"]),
                "shipped_defaults": {
                    "retry_initial_s": 1.0,
                    "retry_max_s": 60.0,
                    "keepalive_interval_s": 5.0,
                    "keepalive_count": 3,
                },
            },
            "down_target_s": self.args.sshd_down,
        }
        if self.args.samples:
            self.recovery["samples"] = _r(trials)

    def recovery_trial(self, station: Any, node_id: str, ports: list[int]) -> dict[str, Any]:
        ctl = self.ctl
        cb_log_before = len(station.callback.log_text())
        stopped = time.time()
        self.callback_sshd.stop(sessions=True)  # with every session: a crash or a reboot
        watcher = ctl.host.spawn(
            [sys.executable, SELF, "_watch", "--sshd", f"{ctl.host.ip}:{self.callback_sshd.port}",
             "--ports", ",".join(map(str, ports)), "--deadline", str(RECOVERY_TIMEOUT + 30)],
            log_name="tunnel-watch",
        )  # fmt: skip
        try:
            watcher.wait_for_log(r'"event": "down"', DOWN_WAIT)
            time.sleep(max(0.0, stopped + self.args.sshd_down - time.time()))
            self.callback_sshd = ctl.start_callback_sshd(reuse_key=True)
            calls: list[float] = []
            seen: list[dict[str, Any]] = []  # what each call saw, for --samples
            live_at = None
            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while time.monotonic() < deadline:
                call_started = time.time()
                rc, out, err, wall = self.autoreg("tunnel", "list", "--json")
                calls.append(wall)
                seen.append({"at": call_started, "s": wall, "live": self._row(out, node_id)})
                if rc != 0:
                    raise RuntimeError(f"autoreg tunnel list exited {rc}: {err[-800:]}")
                if self._live(out, node_id):
                    live_at = time.time()
                    break
            if live_at is None:
                raise TimeoutError(f"no live tunnel port {RECOVERY_TIMEOUT}s after the restart")
            watcher.wait_for_log(r'"event": "banner"', 10)
            marks = {}
            for line in watcher.log_text().splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    marks[rec["event"]] = rec
        finally:
            watcher.terminate(5)
        sshd_up = marks["sshd_up"]["t"]
        reverify = self.helper(
            "_reverify", "--conf", str(ctl.conf), "--node", node_id, "--count", "1"
        )["reverify"][0]
        cb_log = station.callback.log_text()[cb_log_before:]
        return {
            "sshd_down_s": sshd_up - stopped,
            "banner_s": marks["banner"]["t"] - sshd_up,
            "banner_port": marks["banner"]["port"],
            "tunnel_list_s": live_at - sshd_up,
            "tunnel_list_calls": len(calls),
            "call_s": calls,
            "calls": [
                {"after_sshd_up_s": c["at"] - sshd_up, "s": c["s"], "live": c["live"]} for c in seen
            ],
            "reconnects_logged": cb_log.count("reconnecting in"),
            "rotated": marks["banner"]["port"]
            != int((reverify["path_before"] or "tunnel:0").rpartition(":")[2]),
            "reverify_s": reverify["s"],
            "path_before": reverify["path_before"],
            "path_after": reverify["path_after"],
        }

    @staticmethod
    def _row(out: str, node_id: str) -> dict[str, Any] | None:
        """The node's ``live`` map in `autoreg tunnel list --json` output."""
        try:
            rows = json.loads(out)
        except ValueError:
            return None
        return next((r["live"] for r in rows if r["node_id"] == node_id), None)

    @classmethod
    def _live(cls, out: str, node_id: str) -> bool:
        return any((cls._row(out, node_id) or {}).values())

    # -- report -----------------------------------------------------------------------------

    def goals(self) -> dict[str, Any]:
        """issue 16's figures: exec at most 1.0 times plain ssh; one proxy handshake per run."""
        out: dict[str, Any] = {}
        goals: dict[str, Any] = {}
        if self.fleet is not None:
            ratio = self.fleet["exec_vs_plain_ssh"]
            out["exec_vs_plain_ssh"] = ratio
            goals["exec_vs_plain_ssh"] = {
                "ratio": ratio,
                "exec_wall_s": self.fleet["exec_wall_s"]["median"],
                "plain_ssh_parallel_wall_s": self.fleet["plain_ssh_parallel_wall_s"]["median"],
                "nodes": self.fleet["nodes"],
                "parallel": self.fleet["parallel"],
                "goal_at_most": 1.0,
                "met": ratio <= 1.0,
            }
        if self.proxy_fleet is not None:
            handshakes = self.proxy_fleet["proxy_handshakes"]["exec"]
            goals["proxy_handshakes_per_exec"] = {
                "nodes_behind_the_proxy": self.proxy_fleet["nodes"],
                "handshakes": handshakes,
                "goal": 1,
                "met": all(h == 1 for h in handshakes),
            }
        if goals:
            out["goals"] = goals
        return out

    def report(self, wall: float) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for path in self.args.paths:
            timed = [s for s in self.samples if s["path_kind"] == path and not s["warmup"]]

            def col(key: str, rows: list[dict[str, Any]] = timed) -> list[float]:
                return [r[key] for r in rows]

            entry: dict[str, Any] = {
                "learned_from": LEARNED_FROM[path],
                "registration_s": summarize(col("registration_s")),
                "to_registering_s": _brief(col("to_registering_s")),
                "registering_to_registered_s": _brief(col("registering_to_registered_s")),
                "reverify_remembered_path_s": summarize(col("reverify_s")),
                "autoreg_ssh_true_s": summarize(col("autoreg_ssh_s")),
                "plain_ssh_true_s": summarize(col("plain_ssh_s")),
                "paths_recorded": sorted({s["path"].split(":")[0] for s in timed}),
                "warmup_registration_s": [
                    round(s["registration_s"], 4)
                    for s in self.samples
                    if s["path_kind"] == path and s["warmup"]
                ],
                "failures": len(self.failures[path]),
            }
            if path == "tunnel" and timed:
                entry["registration_minus_connect_timeout_s"] = _brief(
                    [x - self.args.connect_timeout for x in col("registering_to_registered_s")]
                )
            if self.failures[path]:
                entry["failure_reasons"] = [f[:300] for f in self.failures[path]]
            paths[path] = entry
        out: dict[str, Any] = {
            "benchmark": "reach",
            "trials": self.args.trials,
            "warmup_trials": self.args.warmup,
            "settings": {
                "connect_timeout_s": self.args.connect_timeout,
                "connect_timeout_shipped_default_s": 10.0,
                "tunnel_port_timeout_s": 3.0,
                "hooks": "none: registered once verified, logged in and given the receipt",
                "direct_and_tunnel_nodes": "announce with autoreg announce",
                "proxy_nodes": "autoreg register; inner network; [cluster:inner] proxy",
                "tunnel_nodes": "inbound tcp/22 dropped on eth0; autoreg callback (ssh -N -R)",
            },
            "registration": paths,
        }
        if self.args.recovery:
            out["tunnel_recovery"] = self.recovery
        if self.args.exec:
            out["exec"] = self.fleet
            out["proxy_exec"] = self.proxy_fleet
            out.update(self.goals())
        failures = {k: len(v) for k, v in self.failures.items() if v}
        if failures:
            out["failures"] = failures
            out["failure_reasons"] = {
                k: [f[:300] for f in v] for k, v in self.failures.items() if v
            }
        out["environment"] = environment(loadavg_start=self.loadavg, loadavg_end=_loadavg())
        out["wall_time_s"] = round(wall, 1)
        if self.args.samples:
            out["samples"] = [_r(s) for s in self.samples]
        return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5, metavar="K",
                   help="timed registrations per path, and sshd restarts")  # fmt: skip
    p.add_argument("--warmup", type=int, default=1, help="untimed registrations per path first")
    p.add_argument("--path", dest="paths", action="append", choices=PATHS,
                   help="only this path in part 1 (repeatable; default: all three)")  # fmt: skip
    p.add_argument("--sshd-down", type=float, default=2.0, metavar="S",
                   help="seconds the callback sshd stays down in each restart")  # fmt: skip
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="S",
                   help="[controller] connect_timeout (shipped default: 10)")  # fmt: skip
    p.add_argument("--fleet", type=int, default=50, metavar="N", help="direct nodes for exec")
    p.add_argument("--parallel", type=int, default=10, help="autoreg exec --parallel")
    p.add_argument("--proxy-fleet", type=int, default=20, metavar="M",
                   help="nodes behind the proxy for exec (0: skip)")  # fmt: skip
    p.add_argument("--exec-rounds", type=int, metavar="R",
                   help="timed exec rounds (default: min(K, 2))")  # fmt: skip
    p.add_argument("--no-recovery", dest="recovery", action="store_false",
                   help="skip the tunnel recovery part")  # fmt: skip
    p.add_argument("--no-exec", dest="exec", action="store_false", help="skip the exec part")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    p.add_argument("--samples", action="store_true", help="include every trial in the JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.warmup < 0 or args.fleet < 1 or args.parallel < 1:
        p.error("--trials, --fleet and --parallel must be at least 1, --warmup at least 0")
    if not 0.5 <= args.connect_timeout <= 30:
        p.error("--connect-timeout: 0.5 to 30 seconds")
    if args.fleet > 200 or not 0 <= args.proxy_fleet <= 200:
        p.error("--fleet, --proxy-fleet: at most 200 (one lab holds 254 hosts)")
    args.paths = args.paths or list(PATHS)
    args.exec_rounds = args.exec_rounds or min(args.trials, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    helpers = {"_reverify": reverify_main, "_watch": watch_main, "_plain_ssh": plain_ssh_main}
    if argv[:1] and argv[0] in helpers:
        return helpers[argv[0]](argv[1:])
    args = parse_args(argv)
    return run_bench(
        lambda workdir: Bench(args, workdir),
        prefix="autoreg-bench-reach-",
        keep=args.keep,
        json_out=args.json_out,
        log=log,
    )


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
