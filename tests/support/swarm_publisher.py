"""Many nodes in one process: N ``registration.node.Announcer`` on one event loop.

Run inside a lab namespace by :class:`swarm.SwarmLab`:

    python swarm_publisher.py SPEC.json

SPEC is ``{"config": PATH, "lifetime": SECONDS, "nodes": [{"id", "address",
"port", "host_key", "receipt"}, …]}``.  Every node gets its own ``Config``,
loaded from the shared node configuration file ``config`` (``[autoreg]``,
``[node] role``, the profile) with the node's own values as overrides, the way
``autoreg announce --id … --address … --port … --host-key … --receipt …``
builds its configuration; ``AUTOREG_TOKEN`` (a join token) applies to every
node, as it would to ``autoreg announce``.  All announcers share ONE started
``ZeroconfTransport``, made from that configuration by ``create_transport``
(the transport ``autoreg announce`` would make), and each runs its own
``Announcer.run()`` unchanged: the same first publication (``probe`` as
configured, shipped default ``no``), the same ``poll_interval`` re-checks of
the receipt, the same re-announcements and goodbyes.

It prints one JSON line ``{"started": T, "nodes": N}`` (``T`` = ``time.time()``
right before the announcers start), then the announcers' own log lines.  On
SIGTERM (or after ``lifetime`` seconds) every announcer is stopped and sends its
goodbye; then the transport is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

#: Seconds the announcers get to send their goodbyes before the process gives up.
STOP_TIMEOUT = 60.0


def node_config(base: Path, node: dict[str, Any], env: dict[str, str]) -> Any:
    """One node's configuration: the shared file plus this node's own values."""
    from registration._config import load_config

    return load_config(
        base,
        env=env,
        overrides={
            "node.id": node["id"],
            "node.name": node.get("name"),
            "node.address": node["address"],
            "node.ssh_port": str(node["port"]),
            "node.host_key": node["host_key"],
            "node.receipt_path": node["receipt"],
        },
    )


async def run(spec: dict[str, Any]) -> int:
    from registration.node import Announcer
    from registration.transport import create_transport

    base = Path(spec["config"])
    env = {k: v for k, v in os.environ.items() if k == "AUTOREG_TOKEN"}
    configs = [node_config(base, node, env) for node in spec["nodes"]]
    if not configs:
        print(json.dumps({"started": time.time(), "nodes": 0}), flush=True)
        return 0
    # The transport autoreg announce would make, bound as [autoreg] interfaces says;
    # started once here, and closed here: the announcers leave a passed transport alone.
    transport = create_transport(configs[0], bind=configs[0].node.address)
    await transport.start()
    announcers = [Announcer(config, transport=transport) for config in configs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.time()
    tasks = [asyncio.ensure_future(a.run()) for a in announcers]
    print(json.dumps({"started": started, "nodes": len(tasks)}), flush=True)
    failed = 0
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), float(spec.get("lifetime", 3600)))
    finally:
        for announcer in announcers:
            announcer.stop()
        done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                failed += 1
                logging.getLogger("swarm").error("announcer failed: %r", task.exception())
        await transport.close()
    print(json.dumps({"stopped": time.time(), "failed": failed}), flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    # As `autoreg announce` logs (registration.cli._setup_logging, level info).
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    return asyncio.run(run(spec))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
