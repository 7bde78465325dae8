"""A second, raw DNS-SD publisher for tests: announces hand-written TXT records.

It does not use autoreg's codec at all, so it plays "another implementation"
(well-formed records) and "a hostile or broken node" (malformed ones).

Usage: python raw_publisher.py IP SPEC.json — SPEC is a list of
{"instance": str, "port": int, "txt": [str|hex-bytes...], "type"?: str, "raw"?: bool};
runs until SIGTERM, then sends goodbyes for everything it published.  A ``raw``
item is not published through python-zeroconf (which refuses some names, such as
ones with control characters): its PTR, SRV, TXT and A records are written into
unsolicited mDNS responses by hand and sent every second.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_autoreg._tcp.local."
# RFC 1035 §3.2.2-4, RFC 2782, RFC 6762 §18: record types, class, header flags.
_TYPE_A, _TYPE_PTR, _TYPE_TXT, _TYPE_SRV, _CLASS_IN = 1, 12, 16, 33, 1
_FLAGS_QR_RESPONSE, _FLAGS_AA = 0x8000, 0x0400


def _txt_bytes(entries: list[str]) -> bytes:
    """Build the raw TXT rdata: length-prefixed strings (RFC 6763 §6.1)."""
    out = b""
    for entry in entries:
        raw = bytes.fromhex(entry[4:]) if entry.startswith("hex:") else entry.encode()
        out += bytes([len(raw)]) + raw
    return out


def _raw_packets(ip: str, items: list[dict[str, object]]) -> list[bytes]:
    """Unsolicited responses carrying ``items`` exactly as written (no name checks)."""
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for n, item in enumerate(items):
        service_type = str(item.get("type", SERVICE_TYPE))
        name = f"{item['instance']}.{service_type}"
        host = f"raw-x{n}.local."
        for record in (
            DNSPointer(service_type, _TYPE_PTR, _CLASS_IN, 4500, name),
            DNSService(name, _TYPE_SRV, _CLASS_IN, 120, 0, 0, int(item["port"]), host),  # type: ignore[call-overload]
            DNSText(name, _TYPE_TXT, _CLASS_IN, 4500, _txt_bytes(item["txt"])),  # type: ignore[arg-type]
            DNSAddress(host, _TYPE_A, _CLASS_IN, 120, socket.inet_aton(ip)),
        ):
            out.add_answer_at_time(record, 0)
    return out.packets()


async def _send_raw(ip: str, items: list[dict[str, object]], stop: asyncio.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.bind((ip, 0))
    try:
        for _ in range(300):  # bounded: at most five minutes
            for packet in _raw_packets(ip, items):
                sock.sendto(packet, ("224.0.0.251", 5353))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
                return
            except TimeoutError:
                continue
    finally:
        sock.close()


async def main(ip: str, spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    aiozc = AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    stop = asyncio.Event()
    raw_items = [item for item in spec if item.get("raw")]
    spec = [item for item in spec if not item.get("raw")]
    sender = asyncio.ensure_future(_send_raw(ip, raw_items, stop)) if raw_items else None
    infos = []
    for n, item in enumerate(spec):
        service_type = item.get("type", SERVICE_TYPE)
        info = AsyncServiceInfo(
            service_type,
            f"{item['instance']}.{service_type}",
            addresses=[socket.inet_aton(ip)],
            port=item["port"],
            properties=_txt_bytes(item["txt"]),
            server=f"raw-{n}.local.",
        )
        await (await aiozc.async_register_service(info, cooperating_responders=True))
        infos.append(info)
    print(f"published {len(infos) + len(raw_items)}", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait_for(stop.wait(), 300)
    if sender is not None:
        await sender
    for info in infos:
        await (await aiozc.async_unregister_service(info))
    await aiozc.async_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
