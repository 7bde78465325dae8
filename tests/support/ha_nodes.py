"""Many nodes announcing from one process: one ``Announcer`` each, one shared transport.

Run by :mod:`halab` inside the lab's node-farm namespace:

    python ha_nodes.py SPEC.json

SPEC: ``{"config": PATH, "nodes": [{"id", "address", "host_key", "receipt"}, …]}``.
Each node's configuration is the shared file plus its own values, as ``autoreg
announce --id … --address … --host-key … --receipt …`` would build it.  Prints
``{"started": N, "at": T}`` (``T``: ``time.time()`` right before the announcers
start); SIGTERM stops them (goodbyes sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any


async def run(spec: dict[str, Any]) -> int:
    from registration._config import load_config
    from registration.node import Announcer
    from registration.transport import create_transport

    base = Path(spec["config"])
    configs = []
    for node in spec["nodes"]:
        overrides = {
            "node.id": node["id"],
            "node.name": node["id"],
            "node.address": node["address"],
            "node.host_key": node["host_key"],
            "node.receipt_path": node["receipt"],
        }
        configs.append(load_config(base, env={}, overrides=overrides))
    if not configs:
        print(json.dumps({"started": 0, "at": time.time()}), flush=True)
        return 0
    transport = create_transport(configs[0], bind=configs[0].node.address)
    await transport.start()
    announcers = [Announcer(config, transport=transport) for config in configs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    at = time.time()
    tasks = [asyncio.ensure_future(a.run()) for a in announcers]
    print(json.dumps({"started": len(tasks), "at": at}), flush=True)
    try:
        await stop.wait()
    finally:
        for announcer in announcers:
            announcer.stop()
        await asyncio.wait(tasks, timeout=20)
        await transport.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    sys.exit(asyncio.run(run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))))
