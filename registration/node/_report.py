"""Why this node is not registered yet, in one line: logged, kept for `autoreg status`,
and, with ``[node] registrar``, learnt from the registrar over HTTPS.

A node that cannot reach its registrar must never fail silently.  The announcer
keeps a :class:`NodeReport`:

- without ``[node] registrar`` it can only say what it did ("announced over mDNS;
  no receipt yet");
- with it, the report posts the node's signed record to the registrar's HTTPS
  endpoint (``POST /v1/announce``) at once, again on every change and
  periodically (``REPOST_INITIAL`` doubling to ``REPOST_MAX``, jittered, well
  inside the registrar's lease) until the node holds its receipt, and follows its
  state meanwhile (``GET /v1/nodes/ID``): pending approval, waiting for a CC, a
  failed hook, no registrar answering (then it backs off, honouring Retry-After).

Every new line is logged once (a warning when nothing answers or the registrar
refuses), repeated every ``REMIND_INTERVAL`` while nothing changes, and written
to ``announce.json`` beside the receipt, which `autoreg status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from .._clock import wait_event
from .._config import Config, NodeConfig
from .._exceptions import AutoregError, RegistrarError
from .._files import write_atomic
from .._text import escape_controls
from ..protocol import Announcement, JoinToken, encode_node
from ._identity import self_registration_state
from ._registrar_client import RegistrarClient

__all__ = ["STATUS_FILE", "NodeReport", "read_node_status", "status_path"]

log = logging.getLogger(__name__)

STATUS_FILE: Final = "announce.json"
#: Seconds before posting again while not registered: first, cap (the registrar keeps
#: a posted node present for 180 s), and the jitter either way (a fraction).
REPOST_INITIAL: Final = 2.0
REPOST_MAX: Final = 60.0
JITTER: Final = 0.2
#: Seconds between looks at the node's state at the registrar: first, cap.
FOLLOW_INITIAL: Final = 1.0
FOLLOW_MAX: Final = 30.0
#: Seconds between posts when the registrar did not answer or refused: cap.
RETRY_MAX: Final = 60.0
#: Seconds between reminders of an unchanged line while not registered.
REMIND_INTERVAL: Final = 300.0

_STATE_WORDS: Final[Mapping[str, str]] = {
    "pending": "pending approval",
    "waiting": "waiting",
    "locked": "locked (lockdown)",
    "refused": "refused",
    "rejected": "rejected",
    "failed": "failed hook",
    "unreachable": "the registrar cannot reach this node over SSH",
    "conflict": "conflict (the admin decides)",
    "interrupted": "interrupted during its hook (the admin decides)",
    "seen": "being decided",
    "queued": "queued for registration",
    "registering": "being registered now",
}


def status_path(node: NodeConfig) -> Path:
    """``announce.json``, beside the receipt."""
    return node.receipt_path.with_name(STATUS_FILE)


def read_node_status(config: Config) -> dict[str, Any] | None:
    """What the announcer last wrote (and whether it still runs), or None."""
    try:
        status = json.loads(status_path(config.node).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    pid = status.get("pid")
    running = False
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
    status["running"] = running
    return status


def view_line(view: Mapping[str, Any], url: str) -> str:
    """The line for what the registrar says about this node (``GET /v1/nodes/ID``)."""
    state = str(view.get("state", "?"))
    reason = str(view.get("reason") or "")
    if state == "registered":
        return f"{url} registered it; its receipt has not arrived on this node yet"
    words = _STATE_WORDS.get(state, state)
    return f"{words} at {url}" + (f": {reason}" if reason else "")


def _jittered(delay: float) -> float:
    return delay * (1 + random.uniform(-JITTER, JITTER))  # noqa: S311 - not crypto


class NodeReport:
    """The node's one line about its registration, and the HTTPS side of announcing."""

    def __init__(self, config: Config, *, token: Callable[[], JoinToken | None]) -> None:
        self._config = config
        self._node = config.node
        self._token = token
        self._ann: Announcement | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.line = ""
        self.registered = False
        self._since = 0.0
        self._logged = 0.0
        self._unwritable = False
        self.posts = 0  # successful posts (tests, benchmarks)

    # -- what the announcer calls ----------------------------------------------------------

    def start(self, ann: Announcement) -> None:
        self._ann = ann
        self._say_announced(ann)
        if self._node.registrar and self._node.registrar_fingerprint:
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The HTTPS side never stops on its own: if it did, say so loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.error("announcing over HTTPS stopped: %r", task.exception(),
                      exc_info=task.exception())  # fmt: skip
            self._say(f"announcing to {self._node.registrar} failed: {task.exception()!r}",
                      warn=True)  # fmt: skip

    def update(self, ann: Announcement) -> None:
        """The announcement as it is now (called on every refresh; cheap when unchanged)."""
        if ann == self._ann:
            return
        self._ann = ann
        self._changed.set()
        self._say_announced(ann)

    def tick(self) -> None:
        """Repeat the line now and then while the node is not registered."""
        now = time.time()
        if not self.registered and self.line and now - self._logged >= REMIND_INTERVAL:
            self._logged = now
            since = time.strftime("%H:%M:%S", time.localtime(self._since))
            log.info("still not registered (since %s): %s", since, escape_controls(self.line))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._write(running=False)

    # -- the line --------------------------------------------------------------------------

    def _say_announced(self, ann: Announcement) -> None:
        if ann.state == "registered":
            standing = self_registration_state(self._node) or "receipt"
            self._say(f"registered ({standing})", registered=True)
        elif not self._node.registrar:
            self._say(
                "not registered yet: announced over mDNS, no receipt yet (a registrar on this "
                "network registers it; set [node] registrar to ask one over HTTPS)"
            )
        elif not self.line or self.registered:
            self._say(f"not registered yet: announcing to {self._node.registrar}")

    def _say(self, line: str, *, registered: bool = False, warn: bool = False) -> None:
        if not registered and not line.startswith("not registered yet: "):
            line = "not registered yet: " + line
        if (line, registered) == (self.line, self.registered):
            return
        self.line, self.registered = line, registered
        self._since = self._logged = time.time()
        log.log(logging.WARNING if warn else logging.INFO, "%s", escape_controls(line))
        self._write(running=True)

    def _write(self, *, running: bool) -> None:
        if self._unwritable:
            return
        ann = self._ann
        status = {
            "pid": os.getpid() if running else None,
            "node_id": ann.node_id if ann else None,
            "role": ann.role if ann else None,
            "registered": self.registered,
            "line": self.line,
            "since": self._since,
            "registrar": self._node.registrar,
            "updated": time.time(),
        }
        path = status_path(self._node)
        try:
            write_atomic(path, json.dumps(status, indent=2) + "\n", mode=0o644, durable=False)
        except OSError as exc:
            self._unwritable = True  # once: the log still has every line
            log.warning("cannot write %s (autoreg status will not show why): %s", path, exc)

    # -- HTTPS -----------------------------------------------------------------------------

    async def _run(self) -> None:
        url, pin = self._node.registrar, self._node.registrar_fingerprint
        assert url is not None and pin is not None
        async with RegistrarClient(url, pin) as client:
            post_due, post_delay, follow, failures = 0.0, REPOST_INITIAL, FOLLOW_INITIAL, 0
            while True:
                ann = self._ann
                assert ann is not None
                if ann.state == "registered":
                    await self._changed.wait()
                    self._changed.clear()
                    post_due, post_delay, failures = 0.0, REPOST_INITIAL, 0
                    continue
                if self._changed.is_set():
                    self._changed.clear()
                    post_due, post_delay = 0.0, REPOST_INITIAL
                token = self._token()
                now = time.monotonic()
                if token is not None and now >= post_due:
                    try:
                        reply = await client.announce(
                            encode_node(ann, token=token, now=time.time()), ann.port
                        )
                    except AutoregError as exc:  # RegistrarError, or a record too large
                        failures += 1
                        retry_after = exc.retry_after if isinstance(exc, RegistrarError) else None
                        delay = retry_after or min(RETRY_MAX, REPOST_INITIAL * 2**failures)
                        post_due = now + _jittered(delay)
                        self._say(f"{exc}; posting again in {delay:.0f} s", warn=True)
                        wait = post_due - now
                    else:
                        failures, follow, self.posts = 0, FOLLOW_INITIAL, self.posts + 1
                        post_due = now + _jittered(post_delay)
                        post_delay = min(REPOST_MAX, post_delay * 2)
                        self._said(reply, url, posted=True)
                        wait = min(follow, post_due - now)
                else:
                    follow = await self._follow(client, ann, token is not None, follow)
                    wait = follow if token is None else min(follow, max(0.0, post_due - now))
                await wait_event(self._changed, max(0.05, wait))

    async def _follow(
        self, client: RegistrarClient, ann: Announcement, signing: bool, follow: float
    ) -> float:
        """Ask the registrar about this node; the delay before asking again."""
        url = client.url
        try:
            view = await client.node(ann.node_id, ann.fingerprint)
        except RegistrarError as exc:
            self._say(str(exc), warn=True)
            return min(FOLLOW_MAX, follow * 2)
        if view is None:
            if signing:
                self._say(f"announced to {url}; not recorded there yet")
            else:
                self._say(
                    f"no join token to sign with, and {url} takes signed announcements only "
                    "([node] token_file or token; `autoreg token create` on the registrar)",
                    warn=True,
                )
            return min(FOLLOW_MAX, follow * 2)
        before = self.line
        self._said(view, url, posted=False)
        return FOLLOW_INITIAL if self.line != before else min(FOLLOW_MAX, follow * 2)

    def _said(self, view: Mapping[str, Any], url: str, *, posted: bool) -> None:
        if "state" in view:
            self._say(view_line(view, url))
        elif posted:
            self._say(f"announced to {url}; not recorded there yet")
