"""Helpers shared by the benchmarks: statistics, environment, the netns lab.

Kept free of heavy imports: the benchmark scripts also run small helper roles
(a publisher, a packet listener) inside lab namespaces, and those must start fast.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


def use_test_support() -> None:
    """Make ``tests/support`` (netlab, autoreg_lab) importable as ``support.*``."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between closest ranks; any n >= 1."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """n, min, median, p90, max of a sample (seconds), rounded; None fields when empty."""
    if not values:
        return {"n": 0, "min": None, "median": None, "p90": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "median": round(percentile(values, 0.5), digits),
        "p90": round(percentile(values, 0.9), digits),
        "max": round(max(values), digits),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ssh_version() -> str | None:
    if shutil.which("ssh") is None:
        return None
    try:
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stderr or out.stdout).strip() or None


def environment(**extra: Any) -> dict[str, Any]:
    """What the figures depend on: library versions, interpreter, kernel, CPU count."""
    env: dict[str, Any] = {
        "zeroconf": _version("zeroconf"),
        "paramiko": _version("paramiko"),
        "autoreg": _version("autoreg"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "openssh": _ssh_version(),
    }
    env.update(extra)
    return env


class Runnable(Protocol):
    """What :func:`run_bench` drives: a benchmark over a scratch work directory."""

    failures: dict[str, list[str]]

    def run(self) -> None: ...

    def report(self, wall: float) -> dict[str, Any]: ...


def run_bench(
    make: Callable[[Path], Runnable],
    *,
    prefix: str,
    keep: bool,
    json_out: Path | None,
    log: Callable[[str], None],
) -> int:
    """Run a benchmark, print its JSON report, clean up; the exit status to return."""
    # SIGTERM unwinds like Ctrl-C, so the labs' context managers kill and delete everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    bench = make(workdir)
    started = time.monotonic()
    ok = False
    try:
        bench.run()
        ok = True
    except Exception as exc:
        from support.netlab import LabUnavailable

        if isinstance(exc, LabUnavailable):
            log(f"cannot run: {exc} (the benchmark needs root for network namespaces)")
            return 2
        raise
    finally:
        if keep or not ok:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(bench.report(time.monotonic() - started), indent=2)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    return 1 if any(bench.failures.values()) else 0
