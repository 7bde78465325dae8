"""What bench/swarm.py makes of one run: figures from the store, /proc and the daemon log.

Pure functions over what :mod:`support.swarm` collected, so that the benchmark
script itself stays about running things.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from _common import percentile, summarize

#: Goals of issue 13 (2 cores, nodes simulated on the same machine).
GOAL_SEEN_ALL_S = 2.0  # 1,000 at once
GOAL_REGISTERED_ALL_S = 12.0  # 1,000 at once
GOAL_RSS_MB = 150.0
GOAL_STORE_MB = 50.0  # under --flood 10000
GOAL_FLOOD_RATIO = 2.0  # genuine nodes under the flood, against without it

_TIMESTAMP = re.compile(r"^\S+ \S+ ")
_NOISE = (
    (re.compile(r"SHA256:[A-Za-z0-9+/]{43}"), "FP"),
    (re.compile(r"\b[a-z]\d+[a-z]*-\d{5}\b"), "ID"),
    (re.compile(r"\d+(\.\d+)*"), "#"),
)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def brief(values: Sequence[float]) -> dict[str, Any]:
    """n, min, median, p90, max (seconds, 3 decimals)."""
    return summarize(values, digits=3)


def halves_rate(times: Sequence[float]) -> dict[str, float | None]:
    """Registrations per second in the first and in the second half of them (from t0)."""
    ordered = sorted(times)
    if len(ordered) < 4:
        return {"first_half_per_s": None, "second_half_per_s": None}
    mid = len(ordered) // 2
    first = mid / ordered[mid - 1] if ordered[mid - 1] > 0 else None
    span = ordered[-1] - ordered[mid - 1]
    second = (len(ordered) - mid) / span if span > 0 else None
    return {"first_half_per_s": rounded(first, 1), "second_half_per_s": rounded(second, 1)}


def log_summary(text: str, top: int = 8) -> dict[str, Any]:
    """Warnings and errors of a daemon log, grouped once ids, numbers and keys are masked."""
    patterns: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    for line in text.splitlines():
        body = _TIMESTAMP.sub("", line)
        level = body.split(" ", 1)[0]
        if level not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        levels[level] += 1
        for rx, mask in _NOISE:
            body = rx.sub(mask, body)
        patterns[" ".join(body.split())[:180]] += 1
    return {
        "warnings": levels["WARNING"],
        "errors": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": text.count("Traceback (most recent call last)"),
        "never_retrieved": text.count("exception was never retrieved"),
        "top": [[pattern, count] for pattern, count in patterns.most_common(top)],
    }


def udp_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    keys = ("InDatagrams", "InErrors", "RcvbufErrors")
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


def swarm_figures(
    ids: Sequence[str], rows: Mapping[str, Any], started: float, nodes: int
) -> dict[str, Any]:
    """Seen/registered/lost/stuck and their times, for one batch, from the store rows."""
    present = [rows[i] for i in ids if i in rows]
    registered = [r for r in present if r.state == "registered"]
    seen_t = [r.first_seen - started for r in present]
    reg_t = [r.registered_at - started for r in registered if r.registered_at is not None]
    states = Counter(r.state for r in present if r.state != "registered")
    return {
        "nodes": nodes,
        "seen": len(present),
        "registered": len(registered),
        "lost": nodes - len(present),
        "stuck": sum(not r.settled for r in present),
        "other_states": dict(states.most_common()),
        "loop_closed": sum(r.announced_state == "registered" for r in registered),
        "seen_all_s": rounded(max(seen_t)) if seen_t and len(present) == nodes else None,
        "registered_all_s": rounded(max(reg_t)) if len(reg_t) == nodes else None,
        "seen_s": brief(seen_t),
        "registered_s": brief(reg_t),
        "registration_rate": halves_rate(reg_t),
    }


def genuine_times(ids: Sequence[str], rows: Mapping[str, Any], started: float) -> list[float]:
    return [
        rows[i].registered_at - started
        for i in ids
        if i in rows and rows[i].state == "registered" and rows[i].registered_at is not None
    ]


def _values(runs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [run[key] for run in runs if run.get(key) is not None]


def swarm_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The top-level figures over runs: the worst run, plus n/min/median/max of each."""
    if not runs:
        return {}

    def worst(key: str) -> float | None:
        values = [run.get(key) for run in runs]
        return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]

    cpu = _values(runs, "cpu_per_node_ms")
    out: dict[str, Any] = {
        "seen_all_s": worst("seen_all_s"),
        "registered_all_s": worst("registered_all_s"),
        "lost": max(run["lost"] for run in runs),
        "stuck": max(run["stuck"] for run in runs),
        "cpu_per_node_ms": rounded(percentile(cpu, 0.5), 2) if cpu else None,
        "daemon_cpu_s": rounded(percentile(_values(runs, "daemon_cpu_s"), 0.5), 2),
        "rss_mb": max(run["rss_mb"] for run in runs),
        "udp_drops": max(run["udp_drops"] for run in runs),
        "store_mb": max(run["store_mb"] for run in runs),
    }
    keys = ("seen_all_s", "registered_all_s", "lost", "stuck", "cpu_per_node_ms",
            "daemon_cpu_s", "rss_mb", "udp_drops", "store_mb", "publisher_cpu_s")  # fmt: skip
    out["over_runs"] = {k: summarize(_values(runs, k), digits=3) for k in keys}
    out["runs_all_seen"] = sum(run["lost"] == 0 for run in runs)
    out["runs_all_registered"] = sum(run["registered"] == run["nodes"] for run in runs)
    out["goals_met"] = {
        "nothing_lost": out["lost"] == 0,
        "nothing_stuck": out["stuck"] == 0,
        "all_registered": out["runs_all_registered"] == len(runs),
        "rss_at_most_150_mb": out["rss_mb"] <= GOAL_RSS_MB,
        # Goals stated for 1,000 nodes; smaller swarms must meet them too.
        "seen_all_within_2_s": None
        if runs[0]["nodes"] > 1000
        else out["seen_all_s"] is not None and out["seen_all_s"] <= GOAL_SEEN_ALL_S,
        "registered_all_within_12_s": None
        if runs[0]["nodes"] > 1000
        else out["registered_all_s"] is not None
        and out["registered_all_s"] <= GOAL_REGISTERED_ALL_S,
    }
    return out


def flood_summary(runs: Sequence[Mapping[str, Any]], genuine: int) -> dict[str, Any]:
    """Per mode: the genuine nodes' times under the flood and idle, pooled over runs."""
    out: dict[str, Any] = {"genuine_s_flood": {}, "genuine_s_idle": {}, "modes": {}}
    for mode in sorted({run["mode"] for run in runs}):
        mine = [run for run in runs if run["mode"] == mode]
        flood = [t for run in mine for t in run["genuine_flood_s"]]
        idle = [t for run in mine for t in run["genuine_idle_s"]]
        out["genuine_s_flood"][mode] = brief(flood)
        out["genuine_s_idle"][mode] = brief(idle)
        ratio = percentile(flood, 0.5) / percentile(idle, 0.5) if flood and idle else None
        all_flood = len(flood) == genuine * len(mine)
        rss = max(run["rss_mb"] for run in mine)
        store = max(run["store_mb"] for run in mine)
        out["modes"][mode] = {
            "median_ratio_flood_to_idle": rounded(ratio, 2),
            "genuine_registered_under_flood": f"{len(flood)}/{genuine * len(mine)}",
            "rss_mb": rss,
            "store_mb": store,
            "goals_met": {
                "genuine_within_2x": all_flood and ratio is not None and ratio <= GOAL_FLOOD_RATIO,
                "rss_at_most_150_mb": rss <= GOAL_RSS_MB,
                "store_at_most_50_mb": store <= GOAL_STORE_MB,
            },
        }
    return out
