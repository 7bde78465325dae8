"""``GET /metrics``: the registrar in Prometheus' text format (version 0.0.4).

Gauges are read from the daemon's in-memory index when scraped (nodes by state
and role, the approval queue).  Counters start at zero when the daemon starts and
are fed by the store's change feed, the same events ``autoreg events`` shows, so
they count what any writer recorded (this daemon, an admin's `approve`):

- ``autoreg_decisions_total{outcome}``: each recorded state change, by the state
  it led to;
- ``autoreg_hook_duration_seconds{role}``: how long hooks ran (a histogram);
- ``autoreg_ssh_outcomes_total{path,outcome}``: how verification over SSH ended
  (``verified`` on the path used, ``unreachable``, ``key-mismatch``);
- the endpoint's own: requests by endpoint and status, connections refused.

Label values come from validated roles and fixed words, and are escaped anyway.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Callable, Iterable
from typing import Final

from .._exceptions import AutoregError
from ..state import Event, NodeState, StateStore
from ._index import NodeIndex

__all__ = ["HOOK_BUCKETS", "Metrics", "render_metrics"]

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the hook-duration histogram's buckets.
HOOK_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Event kinds that record a decision or the outcome of a registration.
DECISION_KINDS: Final = frozenset({s.value for s in NodeState}) | frozenset(
    (
        "ssh",
        "hook",
        "hook-failed",
        "spoofing",
        "interrupted",
        "recovered",
        "approve",
        "deny",
        "retry",
    )
)
WATCH_RETRY_MAX: Final = 30.0
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


class Metrics:
    """Counters fed by the store's change feed, plus the endpoint's own counters."""

    def __init__(self, index: Callable[[], NodeIndex]) -> None:
        self._index = index
        self.decisions: collections.Counter[str] = collections.Counter()
        self.ssh: collections.Counter[tuple[str, str]] = collections.Counter()
        self.hook_buckets: dict[str, list[int]] = {}
        self.hook_sum: dict[str, float] = {}
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()

    def observe(self, event: Event) -> None:
        """Count one event of the change feed."""
        if event.state is not None and event.kind in DECISION_KINDS:
            self.decisions[event.state] += 1
        rec = self._index().get(event.node_id) if event.node_id else None
        if event.kind == "registered":
            path = (rec.path or "direct").split()[0] if rec is not None else "direct"
            self.ssh[(path, "verified")] += 1
        elif event.kind == "ssh":
            self.ssh[("-", "unreachable")] += 1
        elif event.kind == "spoofing":
            self.ssh[("-", "key-mismatch")] += 1
        duration = event.data.get("duration") if isinstance(event.data, dict) else None
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            role = rec.role if rec is not None else "-"
            buckets = self.hook_buckets.setdefault(role, [0] * (len(HOOK_BUCKETS) + 1))
            buckets[bisect.bisect_left(HOOK_BUCKETS, float(duration))] += 1
            self.hook_sum[role] = self.hook_sum.get(role, 0.0) + float(duration)

    async def follow(self, store: StateStore, after: int) -> None:
        """Count every event committed after ``after``, until cancelled."""
        failures = 0
        while True:
            try:
                async for batch in store.watch(after=after):
                    for event in batch:
                        after = event.seq
                        self.observe(event)
                    failures = 0
            except AutoregError as exc:
                failures += 1
                delay = min(WATCH_RETRY_MAX, 0.5 * 2 ** (failures - 1))
                log.warning("metrics: the store's change feed failed: %s; again in %.1fs",
                            exc, delay)  # fmt: skip
                await asyncio.sleep(delay)

    def render(self, *, queue: int, connections: int) -> str:
        return render_metrics(self, self._index(), queue=queue, connections=connections)


def _family(name: str, kind: str, text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]


def render_metrics(metrics: Metrics, index: NodeIndex, *, queue: int, connections: int) -> str:
    """The exposition text: one family after the other, sorted labels, a final newline."""
    nodes: collections.Counter[tuple[str, str]] = collections.Counter(
        (rec.state.value, rec.role) for rec in index
    )
    lines: list[str] = []
    lines += _family(
        "autoreg_nodes", "gauge", "Nodes this registrar knows, by state and role.",
        (f"autoreg_nodes{_labels(state=s, role=r)} {n}" for (s, r), n in sorted(nodes.items())),
    )  # fmt: skip
    lines += _family(
        "autoreg_pending_nodes", "gauge",
        "Nodes in the approval queue (autoreg pending).",
        [f"autoreg_pending_nodes {index.count(NodeState.PENDING)}"],
    )  # fmt: skip
    lines += _family(
        "autoreg_intake_queue", "gauge",
        "Announcements received and not stored yet.", [f"autoreg_intake_queue {queue}"],
    )  # fmt: skip
    lines += _family(
        "autoreg_decisions_total", "counter",
        "State changes recorded since the daemon started, by the state they led to.",
        (f"autoreg_decisions_total{_labels(outcome=o)} {n}"
         for o, n in sorted(metrics.decisions.items())),
    )  # fmt: skip
    hooks: list[str] = []
    for role, buckets in sorted(metrics.hook_buckets.items()):
        running = 0
        for bound, count in zip((*HOOK_BUCKETS, float("inf")), buckets, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            hooks.append(f"autoreg_hook_duration_seconds_bucket{_labels(role=role, le=le)} "
                         f"{running}")  # fmt: skip
        hooks.append(f"autoreg_hook_duration_seconds_sum{_labels(role=role)} "
                     f"{metrics.hook_sum[role]:.3f}")  # fmt: skip
        hooks.append(f"autoreg_hook_duration_seconds_count{_labels(role=role)} {running}")
    lines += _family(
        "autoreg_hook_duration_seconds", "histogram", "How long registration hooks ran.", hooks
    )
    lines += _family(
        "autoreg_ssh_outcomes_total", "counter",
        "How SSH verification of nodes ended, by path (direct, tunnel, proxy).",
        (f"autoreg_ssh_outcomes_total{_labels(path=p, outcome=o)} {n}"
         for (p, o), n in sorted(metrics.ssh.items())),
    )  # fmt: skip
    lines += _family(
        "autoreg_api_requests_total", "counter",
        "Requests to the HTTPS endpoint, by endpoint and status.",
        (f"autoreg_api_requests_total{_labels(endpoint=e, status=str(s))} {n}"
         for (e, s), n in sorted(metrics.requests.items())),
    )  # fmt: skip
    lines += _family(
        "autoreg_api_refused_connections_total", "counter",
        "Connections to the HTTPS endpoint dropped before HTTP, by reason.",
        (f"autoreg_api_refused_connections_total{_labels(reason=r)} {n}"
         for r, n in sorted(metrics.refused.items())),
    )  # fmt: skip
    lines += _family(
        "autoreg_api_connections", "gauge",
        "Connections to the HTTPS endpoint open now.", [f"autoreg_api_connections {connections}"],
    )  # fmt: skip
    return "\n".join(lines) + "\n"
