#!/usr/bin/env python3
"""The autoreg live demo (``make demo``): a small Eucalyptus cloud registers itself.

Builds, inside private network namespaces, a CLC (registrar), a Walrus, the
cluster controller of cluster ``foo`` (a node of the CLC *and* the registrar of
its NCs), a storage controller and two node controllers, with the shipped
hooks from ``scripts/`` installed on both registrars.  Then, while the two
registrars' event logs stream live:

1. boots the nodes in the worst order (NCs and SC before their CC) and shows
   them wait, then register once the CC is registered;
2. prints ``autoreg list`` of both registrars;
3. turns lockdown on for NCs on the CC, boots a third NC (it stays ``locked``),
   boots a second SC (refused: one SC per cluster), turns lockdown off (the
   third NC registers);
4. shows what the ``nc`` hook left on a node and in the registrar's registry;
5. trust: a rogue machine denied, an approval, an install window that seals;
6. ``autoreg bootstrap`` of a machine that has sshd and python3 only;
7. cleans everything up and prints a one-line summary.

Needs root (network namespaces).  Nothing is done in the root network
namespace: all mDNS traffic stays on the lab's private bridge.  Exit status:
0 success, 1 something did not reach the expected state in time, 2 cannot run
here, 130 interrupted.  See demo/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import heapq
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(REPO / "tests"))  # the netns lab lives with the tests

from registration.state import NodeState, SqliteStore  # noqa: E402
from support import netlab  # noqa: E402
from support.autoreg_lab import AutoregLab, Station, autoreg_argv  # noqa: E402
from support.bare import MOUNTS, make_machine  # noqa: E402

S = NodeState
CLUSTER = "foo"
#: Upper bound of every pause between acts (without --fast).
PAUSE = 1.5
#: How long the third NC is watched staying locked before lockdown is lifted.
LOCK_HOLD = 2.0
#: How long a follower may lag behind its store before output goes on anyway.
SYNC_TIMEOUT = 3.0
#: How long a streamed event is held so that both registrars' events print in time order.
EVENT_HOLD = 0.5
POLL = 0.1


class DemoError(Exception):
    """Something did not reach the expected state in time (exit 1)."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived (exit 130 after cleaning up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- output ---------------------------------------------------------------------------


class Out:
    """Everything the audience sees; thread-safe (event followers print too)."""

    def __init__(self, *, quiet: bool, color: bool, t0: float) -> None:
        self.quiet = quiet
        self.color = color
        self.t0 = t0  # wall-clock start, for the +N.Ns stamps
        self.workdir = ""
        self.lock = threading.RLock()
        self._pending: list[tuple[float, int, float, str, str, str, str]] = []
        self._seq = 0
        self._stop = threading.Event()

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def short(self, text: str) -> str:
        return text.replace(self.workdir, "$W") if self.workdir else text

    def _print(self, text: str, stream: TextIO = sys.stdout) -> None:
        with self.lock:
            print(self.short(text), file=stream, flush=True)

    def header(self, title: str) -> None:
        if not self.quiet:
            self._print("\n" + self._c("1", f"== {title} =="))

    def say(self, text: str = "") -> None:
        if not self.quiet:
            self._print(text)

    def step(self, text: str) -> None:
        if not self.quiet:
            self._print(self._c("1;34", "-- ") + text)

    def ok(self, text: str) -> None:
        if not self.quiet:
            self._print(self._c("32", "   ok: ") + text)

    def block(self, text: str, indent: str = "     ") -> None:
        if not self.quiet:
            self._print("\n".join(indent + line for line in text.rstrip("\n").splitlines()))

    def command(self, text: str) -> None:
        if not self.quiet:
            self._print(self._c("33", f"   $ {text}"))

    # Events of the two registrars arrive through two pipes, each polled every 0.25 s, so
    # they are held for EVENT_HOLD seconds and printed in timestamp order: "cc1 registered"
    # on the CLC then comes before "this cc is now registered" on the CC, as it happened.

    def event(self, tag: str, color: str, ts: float, kind: str, message: str) -> None:
        if self.quiet:
            return
        with self.lock:
            self._seq += 1
            heapq.heappush(
                self._pending, (ts, self._seq, time.monotonic(), tag, color, kind, message)
            )

    def flush_events(self, *, everything: bool = False) -> None:
        with self.lock:
            ripe = time.monotonic() - EVENT_HOLD
            while self._pending and (everything or self._pending[0][2] <= ripe):
                ts, _, _, tag, color, kind, message = heapq.heappop(self._pending)
                stamp = f"{max(0.0, ts - self.t0):5.1f}s"
                print(
                    self.short(f"   {self._c(color, tag)} {stamp}  {kind:<11} {message}"),
                    flush=True,
                )

    def _flusher(self) -> None:
        while not self._stop.wait(0.1):
            self.flush_events()

    def start(self) -> None:
        if not self.quiet:
            threading.Thread(target=self._flusher, name="events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.flush_events(everything=True)

    def error(self, text: str) -> None:
        self._print(self._c("1;31", text), sys.stderr)


# -- the event stream: `autoreg events --follow` per registrar ---------------------------

#: Event kinds left out of the stream (bookkeeping, not part of the story).
HIDDEN_KINDS = frozenset({"schema"})


class Follower:
    """Runs ``autoreg -c CONF events --follow --json`` and prints each event, tagged."""

    def __init__(
        self,
        station: Station,
        tag: str,
        color: str,
        out: Out,
        budget: float,
        *,
        register: Callable[[Follower], None],
    ) -> None:
        self.station = station
        self.tag = tag
        self.color = color
        self.out = out
        self.last_seq = 0
        self.ended_reported = False
        self.argv = autoreg_argv(
            "-c",
            str(station.conf),
            "events",
            "--follow",
            "--json",
            "-n",
            "1000",
            "--timeout",
            f"{budget:.0f}",
        )
        self.thread = threading.Thread(target=self._pump, name=f"follow-{tag}", daemon=True)
        self.err_path = station.host.workdir / "events-follow.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                text=True,
            )
        register(self)  # at once, so that cleanup finds it whatever happens next
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.out.say(f"   {self.tag} {line.rstrip()}")
                continue
            if event.get("kind") not in HIDDEN_KINDS:
                self.out.event(
                    self.tag,
                    self.color,
                    float(event.get("ts") or 0),
                    str(event.get("kind")),
                    str(event.get("message")),
                )
            self.last_seq = int(event.get("seq") or self.last_seq)

    def sync(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Wait until every event already in the store has been printed (bounded)."""
        try:
            latest = asyncio.run(_last_events(self.station.state_dir / "autoreg.db"))
        except Exception:  # the stream is cosmetic: never fail the demo on it
            return
        target = latest[-1].seq if latest else 0
        if self.proc.poll() is not None and not self.ended_reported:
            self.ended_reported = True
            err = ""
            with contextlib.suppress(OSError):
                err = self.err_path.read_text(errors="replace").strip()
            self.out.say(
                f"   {self.tag} (event stream ended, exit {self.proc.returncode}"
                + (f": {err.splitlines()[-1]}" if err else "")
                + ")"
            )
        deadline = time.monotonic() + timeout
        while self.last_seq < target and self.proc.poll() is None:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        if self.thread.is_alive():
            self.thread.join(2)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


# -- the demo ------------------------------------------------------------------------------


async def _last_events(db: Path) -> list[Any]:
    store = await SqliteStore.open(db, readonly=True, origin="demo")
    try:
        return await store.last_events(1)
    finally:
        await store.close()


def node_id_for_demo() -> str:
    """A node id shaped like the real default (hash of a machine id), fresh per run."""
    return hashlib.sha256(b"autoreg:" + secrets.token_hex(16).encode()).hexdigest()[:16]


def with_hostname(name: str, argv: list[str]) -> list[str]:
    """Run argv in a private UTS namespace named ``name``, so that ``uname -n`` and the
    receipt's ``registrar_host`` say ``clc``/``cc1`` rather than this machine's name."""
    if shutil.which("unshare") is None:
        return argv
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv]


class Demo:
    def __init__(self, args: argparse.Namespace, out: Out, workdir: Path) -> None:
        self.args = args
        self.out = out
        self.workdir = workdir
        self.timeout: float = args.timeout
        self.alab: AutoregLab | None = None
        self.followers: list[Follower] = []
        self.stations: dict[str, Station] = {}
        self.done: dict[str, Any] = {}  # host name -> its NodeRecord once registered
        self.act = "setting up"

    # -- helpers ------------------------------------------------------------------

    def pause(self, seconds: float = PAUSE) -> None:
        self.sync()
        if not self.args.fast and not self.out.quiet:
            time.sleep(min(seconds, 2.0))

    def sync(self) -> None:
        """Print every event already in the stores before the story goes on."""
        for follower in self.followers:
            follower.sync()
        self.out.flush_events(everything=True)

    def conf(self, station: Station) -> str:
        return self.out.short(str(station.conf))

    def cli(self, station: Station, *args: str, show: bool = True) -> str:
        """Run ``autoreg -c CONF ARGS`` (outside the namespaces: it only reads files)."""
        self.sync()
        try:
            result = station.cli(*args, check=False, timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise DemoError(
                f"`autoreg {' '.join(args)}` on {station.host.name} took over 30s"
            ) from exc
        if result.returncode != 0:
            raise DemoError(
                f"`autoreg {' '.join(args)}` on {station.host.name} exited "
                f"{result.returncode}: {result.stderr.strip()}"
            )
        if show:
            with self.out.lock:  # the command and its output together, then its events
                self.out.command(
                    f"autoreg -c {self.conf(station)} " + " ".join(_q(a) for a in args)
                )
                self.out.block(result.stdout or result.stderr)
            self.sync()
        return result.stdout

    def wait(
        self, what: str, predicate: Callable[[], Any], diagnose: Callable[[], str] = lambda: ""
    ) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                detail = diagnose()
                raise DemoError(
                    f"timed out after {self.timeout:g}s waiting for {what}"
                    + (f"\n{detail}" if detail else "")
                )
            time.sleep(POLL)

    def wait_state(
        self, registrar: Station, node: Station, *states: NodeState, reason: str | None = None
    ) -> Any:
        names = "/".join(s.value for s in states)
        what = f"{registrar.host.name} to record {node.host.name} as {names}"
        if reason:
            what += f" ({reason!r})"

        def check() -> Any:
            rec = registrar.node(node.node_id)
            if rec is not None and rec.state in states and (reason is None or reason in rec.reason):
                return rec
            return None

        def diagnose() -> str:
            rec = registrar.node(node.node_id)
            now = (
                f"{node.host.name} is {rec.state.value}: {rec.reason}"
                if rec
                else f"{registrar.host.name} has not seen {node.host.name} at all"
            )
            return f"  {now}\n" + self.log_tails(registrar, node)

        return self.wait(what, check, diagnose)

    def log_tails(self, *stations: Station, lines: int = 12) -> str:
        parts = []
        for st in stations:
            for proc, label in ((st.daemon, "daemon"), (st.announcer, "announce")):
                if proc is None:
                    continue
                tail = proc.log_text().splitlines()[-lines:]
                parts.append(
                    f"  --- {st.host.name} {label} log ({proc.log_path}), last "
                    f"{len(tail)} lines ---"
                )
                parts.extend(f"  {line}" for line in tail)
        return "\n".join(parts)

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            raise DemoError(message)

    # -- building the cloud -------------------------------------------------------------

    def _adopt(self, station: Station) -> Station:
        self.stations[station.host.name] = station
        return station

    def registrar(
        self,
        name: str,
        role: str,
        *,
        node_role: str | None = None,
        hooks: tuple[str, ...],
        credentials: dict[str, str],
    ) -> Station:
        assert self.alab is not None
        cluster = CLUSTER if node_role else None
        st = self._adopt(
            self.alab.registrar(
                name, role, cluster=cluster, node_role=node_role, node_id=node_id_for_demo()
            )
        )
        st.hooks_dir.mkdir(parents=True, exist_ok=True)
        for hook in hooks:  # shipped scripts, linked: they find lib/ through readlink -f
            (st.hooks_dir / hook).symlink_to(SCRIPTS / hook)
        # A new installation's trust: signed announcements register, unsigned ones wait.
        st.extra.setdefault("controller", {})["trust"] = "token"
        creds = st.host.workdir / "credentials"
        creds.mkdir(mode=0o700, exist_ok=True)
        for file_name, what in credentials.items():
            path = creds / file_name
            path.write_text(
                f"# autoreg demo placeholder: {what}\n"
                f"# (not a real key) generated {time.strftime('%Y-%m-%d %H:%M:%S')} "
                f"on {name}, token {secrets.token_hex(8)}\n"
            )
            path.chmod(0o600)
        return st

    def node(self, name: str, role: str, cluster: str | None = None) -> Station:
        assert self.alab is not None
        return self._adopt(self.alab.node(name, role, cluster=cluster, node_id=node_id_for_demo()))

    def start_daemon(self, st: Station) -> None:
        st.write_config()
        argv = with_hostname(st.host.name, autoreg_argv("-c", str(st.conf), "daemon"))
        st.daemon = st.host.spawn(argv, log_name="daemon")
        try:
            st.daemon.wait_for_log(r"registrar \S+ started", self.timeout)
        except AssertionError as exc:
            raise DemoError(f"the registrar on {st.host.name} did not start: {exc}") from exc

    def boot(self, st: Station) -> None:
        try:
            st.start_announcer(wait=False)
            assert st.announcer is not None
            st.announcer.wait_for_log(r"announced ", self.timeout)
        except AssertionError as exc:
            raise DemoError(f"{st.host.name} could not announce itself: {exc}") from exc

    def describe(self, st: Station) -> str:
        bits = []
        if st.role:
            bits.append(f"node {st.role}" + (f" of cluster {st.cluster}" if st.cluster else ""))
        if st.registrar_role:
            hooks = sorted(p.name for p in st.hooks_dir.iterdir()) if st.hooks_dir.exists() else []
            bits.append(f"registrar ({st.registrar_role}), hooks.d: {' '.join(hooks)}")
        return f"{st.host.name:<7} {st.host.ip:<12} {st.node_id}  " + "; ".join(bits)

    def registrar_state(self, st: Station) -> str:
        try:
            status = json.loads((st.state_dir / "daemon.json").read_text())
        except (OSError, ValueError):
            return "?"
        return str(status.get("registrar_state", "?"))

    # -- the acts --------------------------------------------------------------------

    def run(self, lab: netlab.Lab) -> dict[str, Any]:
        self.act1_boot(lab)
        self.act2_tables()
        self.act3_lockdown()
        self.act4_hook()
        self.act5_trust()
        self.act6_bootstrap()
        done = self.done
        counts = {
            "clc": [n for n in ("walrus", "cc1", "sc1") if n in done],
            "cc1": [n for n in ("nc1", "nc2", "nc3", "nc4", "nc5", "nc6", "nc8") if n in done],
        }
        return {
            "registered": counts,
            "refused": ["sc2"],
            "locked_then_registered": ["nc3"],
            "denied": ["rogue"],
            "approved": ["nc4"],
            "window": ["nc5", "nc6"],
            "pending": ["nc7"],
            "bootstrapped": ["nc8"],
        }

    def token(self, registrar: Station, *args: str) -> str:
        """`autoreg token create ARGS`, shown; the token (ID.SECRET) from its last line."""
        return self.cli(registrar, "token", "create", *args).strip().splitlines()[-1]

    def give_token(self, node: Station, token: str) -> None:
        """The token on the node, as an install medium leaves it (deleted once used)."""
        path = node.host.workdir / "join_token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        node.extra.setdefault("node", {})["token_file"] = str(path)

    def build(self, lab: netlab.Lab) -> None:
        """The hosts, their sshds, keys, hooks and credentials; nothing runs yet."""
        out = self.out
        self.alab = alab = AutoregLab(lab)
        out.say(
            f"   The lab: one private bridge in its own network namespace, every host in its "
            f"own\n   namespace on {lab.subnet} with a real sshd."
        )
        clc = self.registrar(
            "clc",
            "clc",
            hooks=("walrus", "cc", "sc"),
            credentials={"cloud-cert.pem": "the cloud certificate"},
        )
        cc1 = self.registrar(
            "cc1",
            "cc",
            node_role="cc",
            hooks=("nc",),
            credentials={
                "cluster-cert.pem": "cluster foo's certificate",
                "node-cert.pem": "the NCs' certificate",
            },
        )
        walrus = self.node("walrus", "walrus")
        sc1 = self.node("sc1", "sc", CLUSTER)
        nc1 = self.node("nc1", "nc", CLUSTER)
        nc2 = self.node("nc2", "nc", CLUSTER)
        alab.authorize_all()
        out.say("   Hosts (name, address, node id, what it is):")
        for st in (clc, cc1, walrus, sc1, nc1, nc2):
            out.say("     " + self.describe(st))
        out.say(f"   The hooks are the shipped ones, linked from {SCRIPTS}/.")

    def act1_boot(self, lab: netlab.Lab) -> None:
        out = self.out
        self.act = "1. Booting the cloud"
        out.header(self.act)
        self.build(lab)
        clc, cc1, walrus, sc1, nc1, nc2 = (
            self.stations[n] for n in ("clc", "cc1", "walrus", "sc1", "nc1", "nc2")
        )

        out.step(
            "The admin vouches for the machines being installed: join tokens, one use "
            "per machine (install media carry one each; here they are handed over)"
        )
        for_clc = self.token(
            clc,
            "--role",
            "walrus",
            "--role",
            "cc",
            "--role",
            "sc",
            "--uses",
            "3",
            "--ttl",
            "1h",
            "--description",
            "demo: the cloud",
        )
        for_cc1 = self.token(
            cc1,
            "--role",
            "nc",
            "--cluster",
            CLUSTER,
            "--uses",
            "3",
            "--ttl",
            "1h",
            "--description",
            "demo: cluster foo's NCs",
        )
        for st in (walrus, sc1, cc1):
            self.give_token(st, for_clc)
        for st in (nc1, nc2):
            self.give_token(st, for_cc1)
        self.cc1_token = for_cc1
        self.pause()

        out.step("Starting the registrars: the CLC, and cc1 (it registers cluster foo's NCs)")
        self.start_daemon(clc)
        self.start_daemon(cc1)
        if not out.quiet:
            budget = max(300.0, 8 * self.timeout)  # they also stop on their own
            for st, tag, color in ((clc, "[clc]", "36"), (cc1, "[cc] ", "35")):
                Follower(st, tag, color, out, budget, register=self.followers.append)
            out.say(
                "   Live event logs below: `autoreg events --follow` of each registrar, "
                "tagged [clc] / [cc],\n   with seconds since the demo started."
            )
        self.wait(
            "cc1's registrar to start in standby", lambda: self.registrar_state(cc1) == "standby"
        )
        self.pause(0.5)
        out.step(
            f"cc1's registrar announces state={self.registrar_state(cc1)}: it is not "
            "registered itself yet, so it registers nobody"
        )
        self.pause()

        out.step("Booting nc1, nc2 and sc1 first: all three depend on the CC, which is not up yet")
        for st in (nc1, nc2, sc1):
            self.boot(st)
        self.wait_state(clc, sc1, S.WAITING, reason="waiting for cc of cluster foo")
        for nc in (nc1, nc2):
            self.wait_state(
                cc1, nc, S.WAITING, reason="waiting for this cc foo to be registered itself"
            )
        self.pause(0.5)
        out.ok("sc1 and both NCs are waiting, each with the reason it waits")
        self.pause()

        out.step("Booting walrus: nothing to wait for (one Walrus per cloud)")
        self.boot(walrus)
        done = self.done
        done["walrus"] = self.wait_state(clc, walrus, S.REGISTERED)
        self.pause(0.5)
        out.ok("walrus registered")
        self.pause()

        out.step(
            "Booting cc1 last (the CC is a node too): the CLC registers it, then sc1 "
            "(on the CLC) and the NCs (on cc1) follow"
        )
        self.boot(cc1)
        done["cc1"] = self.wait_state(clc, cc1, S.REGISTERED)
        done["sc1"] = self.wait_state(clc, sc1, S.REGISTERED)
        for nc in (nc1, nc2):
            done[nc.host.name] = self.wait_state(cc1, nc, S.REGISTERED)
        self.wait("cc1's registrar to turn active", lambda: self.registrar_state(cc1) == "active")
        self.pause(0.5)
        cc_at = done["cc1"].registered_at
        for name in ("sc1", "nc1", "nc2"):
            at = done[name].registered_at
            self.expect(
                at is not None and cc_at is not None and at > cc_at,
                f"{name} was registered before cc1 (ordering broken)",
            )
        order = sorted(done.items(), key=lambda kv: kv[1].registered_at)
        out.ok(
            "registered in dependency order: "
            + ", ".join(f"{name} +{rec.registered_at - out.t0:.1f}s" for name, rec in order)
            + f"; cc1's registrar is now {self.registrar_state(cc1)}"
        )
        self.pause()

    def act2_tables(self) -> None:
        out = self.out
        clc, cc1 = self.stations["clc"], self.stations["cc1"]
        self.act = "2. Who is registered where"
        out.header(self.act)
        out.step("The CLC registered the Walrus, the CC and the SC:")
        self.cli(clc, "list")
        out.step("cc1 registered the NCs of its own cluster:")
        self.cli(cc1, "list")
        self.pause()

    def act3_lockdown(self) -> None:
        out = self.out
        clc, cc1 = self.stations["clc"], self.stations["cc1"]
        self.act = "3. Lockdown and uniqueness"
        out.header(self.act)
        out.step("Freezing NC registration on cc1 (live, no restart):")
        self.cli(cc1, "lockdown", "on", "--role", "nc", "--reason", "demo: cluster foo is full")
        self.wait(
            "cc1's registrar to announce state=locked",
            lambda: self.registrar_state(cc1) == "locked",
        )
        self.pause(0.5)
        out.ok("cc1's registrar now announces state=locked")
        out.step("Booting a third NC, nc3:")
        nc3 = self.node("nc3", "nc", CLUSTER)
        self.alab_authorize()
        self.give_token(nc3, self.cc1_token)
        self.boot(nc3)
        self.wait_state(cc1, nc3, S.LOCKED)
        hold = LOCK_HOLD if not self.args.fast else 1.0
        time.sleep(hold)
        rec = cc1.node(nc3.node_id)
        self.expect(
            rec is not None and rec.state is S.LOCKED,
            f"nc3 did not stay locked: {rec.state.value if rec else 'unknown'}",
        )
        self.sync()
        out.ok(f"nc3 is still locked {hold:g}s later, and the list says why:")
        self.cli(cc1, "list", "--state", "locked")
        self.pause()

        out.step(
            "Booting a second storage controller for cluster foo, sc2 (with a token of its own):"
        )
        sc2 = self.node("sc2", "sc", CLUSTER)
        self.alab_authorize()
        self.give_token(sc2, self.token(clc, "--role", "sc", "--cluster", CLUSTER, "--ttl", "1h"))
        self.boot(sc2)
        refused = self.wait_state(
            clc, sc2, S.REFUSED, reason=f"a sc for cluster {CLUSTER} is already registered: sc1"
        )
        self.pause(0.5)
        self.expect("autoreg forget" in refused.reason, f"unexpected reason: {refused.reason}")
        out.ok(
            "sc2 is refused, not queued: one SC per cluster, and the reason names the holder "
            "and how to replace it"
        )
        self.pause()

        out.step("Lifting the lockdown on cc1: the waiting nc3 registers at once")
        self.cli(cc1, "lockdown", "off", "--role", "nc")
        self.done["nc3"] = self.wait_state(cc1, nc3, S.REGISTERED)
        self.wait(
            "cc1's registrar to be active again", lambda: self.registrar_state(cc1) == "active"
        )
        self.pause(0.5)
        out.ok("nc3 registered; cc1's registrar is active again")
        self.pause()

    def alab_authorize(self) -> None:
        assert self.alab is not None
        self.alab.authorize_all()

    def act5_trust(self) -> None:
        out = self.out
        clc, cc1 = self.stations["clc"], self.stations["cc1"]
        self.act = "5. Trust: nothing registers just because it spoke"
        out.header(self.act)
        out.step("A machine nobody vouched for, `rogue`, announces itself as a Walrus (no token):")
        rogue = self.node("rogue", "walrus")
        self.alab_authorize()
        self.boot(rogue)
        rec = self.wait_state(clc, rogue, S.PENDING)
        assert rogue.sshd is not None
        contacted = rogue.sshd.proc.log_text().count(f"Connection from {clc.host.ip} ")
        self.expect(contacted == 0, "the CLC connected to a pending node")
        out.ok(
            f"rogue waits in the approval queue ({rec.reason.split(':')[0]}); the CLC has "
            "not opened a single SSH connection to it"
        )
        self.cli(clc, "pending")
        self.cli(clc, "deny", "rogue", "--reason", "demo: not in the inventory")
        self.wait_state(clc, rogue, S.REJECTED, reason="denied by admin")
        out.ok("rogue is denied: its host key stays refused whenever it announces, under any id")
        self.pause()

        out.step("nc4 was installed without a token: it waits until the admin approves it")
        nc4 = self.node("nc4", "nc", CLUSTER)
        self.alab_authorize()
        self.boot(nc4)
        self.wait_state(cc1, nc4, S.PENDING)
        self.cli(cc1, "approve", "nc4")
        self.done["nc4"] = self.wait_state(cc1, nc4, S.REGISTERED)
        out.ok("nc4 registered once approved (the approval pins the host key the admin saw)")
        self.pause()

        out.step("An install window on cc1: unsigned NCs welcome, at most two, for ten minutes")
        self.cli(cc1, "window", "open", "--role", "nc", "--for", "10m", "--max", "2")
        late = [self.node(f"nc{i}", "nc", CLUSTER) for i in (5, 6, 7)]
        self.alab_authorize()
        for st in late[:2]:
            self.boot(st)
            self.done[st.host.name] = self.wait_state(cc1, st, S.REGISTERED)
        self.wait(
            "the window to seal itself",
            lambda: "sealed" in self.cli(cc1, "window", "status", show=False),
        )
        self.boot(late[2])
        self.wait_state(cc1, late[2], S.PENDING)
        self.cli(cc1, "window", "status")
        out.ok(
            "nc5 and nc6 registered, the window sealed itself after two, and nc7 waits "
            "for an approval"
        )
        self.pause()

    def act6_bootstrap(self) -> None:
        out = self.out
        cc1 = self.stations["cc1"]
        self.act = "6. A machine with nothing installed"
        out.header(self.act)
        out.step("nc8 has sshd and python3, nothing of autoreg; cc1 brings it in over SSH:")
        assert self.alab is not None
        machine = make_machine(self.alab, "nc8", cc1)
        args = ["bootstrap", "--role", "nc", "--cluster", CLUSTER, "--accept-new", machine.ip]
        # One host key is one node: bootstrap derives the id from the key it verified.
        key = base64.b64decode(machine.sshd.host_public_key.split()[1])
        node_id = hashlib.sha256(key).hexdigest()[:16]
        for attempt in ("first", "again"):
            self.sync()
            result = cc1.cli_in_ns(*args, timeout=self.timeout + 60, check=False)
            if result.returncode != 0:
                raise DemoError(f"`autoreg bootstrap` exited {result.returncode}: "
                                f"{result.stderr.strip()[-2000:]}")  # fmt: skip
            with self.out.lock:
                self.out.command(f"autoreg -c {self.conf(cc1)} " + " ".join(_q(a) for a in args))
                self.out.block(result.stdout)
            self.sync()
            if attempt == "first":
                self.done["nc8"] = self.wait(
                    "cc1 to record nc8 as registered",
                    lambda: (r := cc1.node(node_id)) is not None and r.state is S.REGISTERED and r,
                )
                agent = ", ".join(p.name for p in machine.cached())
                out.ok(
                    "nc8 registered with a single-use token bootstrap made for it; the agent "
                    f"({agent}) stays in nc8's /var/cache/autoreg"
                )
        self.expect("copied to 0" in result.stdout, "the second bootstrap copied the agent again")
        out.ok("run again: nc8 is registered already and its cache has the agent: nothing copied")
        self.pause()

    def act4_hook(self) -> None:
        out = self.out
        self.act = "4. What a hook did"
        out.header(self.act)
        self.show_hook_work(self.stations["cc1"], self.stations["nc3"])
        self.pause()

    def show_hook_work(self, registrar: Station, node: Station) -> None:
        out = self.out
        node_dir = node.receipt.parent
        out.step(
            f"The nc hook's own report for {node.host.name}, kept in cc1's event log "
            f"(`autoreg show {node.host.name}`):"
        )
        events = registrar.events(node.node_id)
        hook_runs = [e for e in events if e.kind == "registered" and e.data.get("hook")]
        self.expect(bool(hook_runs), f"no hook run recorded for {node.host.name}")
        run = hook_runs[-1].data
        out.block(str(run.get("stdout", "")).rstrip() or "(no output)")
        if str(run.get("stderr", "")).strip():
            out.block(str(run["stderr"]).rstrip(), indent="     stderr: ")
        out.say(f"   exit {run.get('exit')} after {run.get('duration')}s")

        out.step(
            f"On the node {node.host.name}: its autoreg directory (in real life "
            f"/var/lib/autoreg/node; here {self.out.short(str(node_dir))}):"
        )
        listing = []
        for path in sorted(node_dir.rglob("*")):
            info = path.lstat()
            rel = path.relative_to(node_dir)
            listing.append(f"{stat.filemode(info.st_mode)} {info.st_size:>5}  {rel}")
        out.block("\n".join(listing))
        for name in ("registered-by", "receipt.json"):
            path = node_dir / name
            self.expect(path.is_file(), f"{node.host.name} has no {name} in {node_dir}")
            out.command(f"cat {self.out.short(str(path))}")
            out.block(path.read_text())
        cred = node_dir / "credentials" / "cluster-cert.pem"
        self.expect(cred.is_file(), f"the credentials did not reach {node.host.name}")
        source = registrar.host.workdir / "credentials" / "cluster-cert.pem"
        self.expect(
            cred.read_bytes() == source.read_bytes(),
            f"{cred} differs from the registrar's {source}",
        )
        out.ok(
            "credentials/cluster-cert.pem on the node is byte-identical to cc1's, mode "
            f"{stat.filemode(cred.stat().st_mode)}"
        )

        access = registrar.state_dir / "nodes" / node.node_id
        assert node.sshd is not None
        known = (access / "known_hosts").read_text().split("\n")
        keys = {" ".join(line.split()[1:3]) for line in known if line.strip()}
        self.expect(
            keys == {node.sshd.host_public_key},
            f"{access / 'known_hosts'} does not hold exactly {node.host.name}'s host key",
        )
        out.ok(
            f"the hook reached {node.host.name} only through `ssh -F "
            f"{self.out.short(str(access / 'ssh_config'))} node`, whose known_hosts holds "
            f"exactly the host key verified against the announced fingerprint "
            f"({node.sshd.fingerprint})"
        )

        registry = registrar.state_dir / "registry" / f"{node.role}.tsv"
        out.step(
            "On the registrar cc1: the registry the nc hook appends to (the stand-in for "
            "`euca_conf --register-nodes`):"
        )
        self.expect(registry.is_file(), f"no registry file {registry}")
        out.command(f"cat {self.out.short(str(registry))}   # tab-separated; aligned here")
        out.block(_columns(registry.read_text()))
        lines = [ln for ln in registry.read_text().splitlines() if not ln.startswith("#")]
        self.expect(len(lines) == 3, f"{registry} should list 3 NCs, has {len(lines)}")

    # -- cleanup -----------------------------------------------------------------------

    def stop_followers(self) -> None:
        for follower in self.followers:
            with contextlib.suppress(Exception):
                follower.sync(1.0)
        for follower in self.followers:
            follower.stop()
        self.followers = []


def _columns(tsv: str) -> str:
    rows = [line.split("\t") for line in tsv.splitlines() if line]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def _q(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:" for c in arg) else repr(arg)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted in the main thread (so cleanup runs)."""

    def handler(signum: int, _frame: Any) -> NoReturn:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signals_deferred(out: Out) -> None:
    """During cleanup, further signals only say that cleanup is under way."""

    def handler(signum: int, _frame: Any) -> None:
        out.error(
            f"autoreg demo: {signal.Signals(signum).name} received; still cleaning up "
            "(namespaces, processes), a few seconds..."
        )

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="autoreg live demo: a small Eucalyptus cloud in network namespaces "
        "registers itself (needs root)."
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="working directory (must be empty or absent; default: a new temp dir); "
        "removed at the end unless --keep",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (configs, state, logs) afterwards",
    )
    p.add_argument("--fast", action="store_true", help="no pauses between the acts")
    p.add_argument(
        "--quiet", action="store_true", help="print only the final summary line (and errors)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each step may take before the demo fails (default 60)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear story
    args = parse_args(argv)
    if args.timeout <= 0:
        print("run_demo: --timeout must be positive", file=sys.stderr)
        return 2
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.quiet
    started_wall, started = time.time(), time.monotonic()
    out = Out(quiet=args.quiet, color=color, t0=started_wall)
    if os.geteuid() != 0:
        out.error("autoreg demo: needs root (it builds network namespaces); try: sudo make demo")
        return 2

    created_workdir = False
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="autoreg-demo-"))
        created_workdir = True
    else:
        workdir = args.workdir.resolve()
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            out.error(
                f"autoreg demo: --workdir {workdir} exists and is not an empty directory "
                "(old state there would confuse the registrars); pick another"
            )
            return 2
        created_workdir = not workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
    out.workdir = str(workdir)

    result: dict[str, Any] | None = None
    failure: str | None = None
    code = 0
    demo = Demo(args, out, workdir)
    lab: netlab.Lab | None = None
    cleanup_note = ""
    out.start()
    # nc8's own /etc/autoreg, /var/lib/autoreg, /var/cache/autoreg (act 6) are mounted on
    # these paths in its namespace: made here if this machine has none, removed after.
    with netlab.mountpoints(MOUNTS), signals_raise():
        try:
            out.say("autoreg live demo — a small Eucalyptus cloud registers itself")
            if not out.quiet:
                print(f"   (files: $W = {workdir})", flush=True)
            try:
                lab = netlab.Lab(workdir / "lab", index=0)
            except netlab.LabUnavailable as exc:
                out.error(f"autoreg demo: cannot build the network lab here: {exc}")
                code = 2
            else:
                result = demo.run(lab)
        except Interrupted as exc:
            failure = f"interrupted by {exc} during '{demo.act}'"
            code = 130
        except DemoError as exc:
            failure = f"failed during '{demo.act}': {exc}"
            code = 1
        except Exception as exc:  # report, clean up, exit non-zero
            failure = f"crashed during '{demo.act}': {exc!r}"
            code = 1
        finally:
            signals_deferred(out)
            try:
                demo.stop_followers()
                out.stop()
                out.header("7. Cleaning up")
                if lab is not None:
                    out.step(
                        "stopping the registrars, announcers and sshds; deleting the namespaces"
                    )
                    lab.close()
                leaked = netlab.leaked_namespaces() + [str(p) for p in netlab.leaked_processes()]
                if leaked:
                    cleanup_note = f"; LEFT BEHIND: {', '.join(leaked)}"
                    code = code or 1
                else:
                    cleanup_note = "; namespaces and processes cleaned up"
                    out.ok("no namespace and no process of the demo is left")
            except BaseException as exc:  # cleanup must report, not hide
                cleanup_note = f"; CLEANUP FAILED: {exc}"
                code = code or 1
    elapsed = time.monotonic() - started

    keep = args.keep or (code == 1 and failure is not None)
    if keep:
        cleanup_note += f"; files kept in {workdir}"
    elif created_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        for child in list(workdir.iterdir()):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()

    if failure is not None:
        out.workdir = ""  # full paths in the error: the files may be kept
        out.error(f"autoreg demo: {failure}")
        verdict = "STOPPED" if code == 130 else "FAILED"
        out.error(f"autoreg demo: {verdict} after {elapsed:.1f}s{cleanup_note}")
        return code
    if result is None:
        return code or 1
    regs = result["registered"]
    total = sum(len(v) for v in regs.values())
    by = "; ".join(f"{k}: {', '.join(v)}" for k, v in regs.items())
    line = (
        f"autoreg demo: OK — {total} nodes registered ({by}), "
        f"{len(result['refused'])} refused (sc2), nc3 held by lockdown then registered, "
        "rogue denied, nc4 approved, nc5/nc6 through an install window that sealed, "
        f"nc7 pending, nc8 bootstrapped over SSH, in {elapsed:.1f}s{cleanup_note}"
    )
    with out.lock:
        print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
