"""A second, raw DNS-SD publisher for tests: announces hand-written TXT records.

It does not use autoreg's codec at all, so it plays "another implementation"
(well-formed records) and "a hostile or broken node" (malformed ones).

Usage: python raw_publisher.py IP SPEC.json — SPEC is a list of
{"instance": str, "port": int, "txt": [str|hex-bytes...]}; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_autoreg._tcp.local."


def _txt_bytes(entries: list[str]) -> bytes:
    """Build the raw TXT rdata: length-prefixed strings (RFC 6763 §6.1)."""
    out = b""
    for entry in entries:
        raw = bytes.fromhex(entry[4:]) if entry.startswith("hex:") else entry.encode()
        out += bytes([len(raw)]) + raw
    return out


async def main(ip: str, spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    aiozc = AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    infos = []
    for n, item in enumerate(spec):
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{item['instance']}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(ip)],
            port=item["port"],
            properties=_txt_bytes(item["txt"]),
            server=f"raw-{n}.local.",
        )
        await (await aiozc.async_register_service(info, cooperating_responders=True))
        infos.append(info)
    print(f"published {len(infos)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait_for(stop.wait(), 300)
    for info in infos:
        await (await aiozc.async_unregister_service(info))
    await aiozc.async_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
