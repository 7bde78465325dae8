"""A cheap flood of bogus node announcements, for :class:`swarm.SwarmLab`.

    python swarm_bogus.py SPEC.json

SPEC is ``{"source": IP, "role": ROLE, "nodes": [[ID, IP], …], "rate": R,
"rounds": K, "per_packet": P}``.  Each bogus node is announced with the records a
real node's announcement carries (PTR, SRV, TXT, A; TTLs as python-zeroconf sets
them), its TXT made by autoreg's own ``encode_node`` (well formed, unsigned,
``state=ready``) with a fingerprint derived from its id, and its address one that
the lab black-holes.  P nodes go into one unsolicited mDNS response (multicast,
from ``source``), at R nodes per second, K rounds (RFC 6762 §8.3: a responder
announces at least twice, one second apart; a round never starts less than one
second after the previous one began).  Nothing else: it answers no query and
sends no goodbye, which is all a flooder needs to do, at a fraction of the CPU
of a real responder per record.

Prints ``{"round": k, "sent": n, "t": T}`` after each round, then
``{"done": true}``, and exits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText

from registration.protocol import NODE_SERVICE_TYPE, Announcement, encode_node, instance_name

# RFC 1035 §3.2.2-4, RFC 2782, RFC 6762 §18: record types, class, header flags.
_TYPE_A, _TYPE_PTR, _TYPE_TXT, _TYPE_SRV, _CLASS_IN = 1, 12, 16, 33, 1
_FLAGS_QR_RESPONSE, _FLAGS_AA = 0x8000, 0x0400
#: python-zeroconf's TTLs: host records (SRV, A) 120 s, the others 75 min.
_TTL_HOST, _TTL_OTHER = 120, 4500
MDNS = ("224.0.0.251", 5353)


def fingerprint_for(node_id: str) -> str:
    """A well-formed, unique SHA256 fingerprint no real key has (derived from the id)."""
    digest = hashlib.sha256(b"swarm-bogus:" + node_id.encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _txt_rdata(properties: dict[str, str]) -> bytes:
    out = b""
    for key, value in properties.items():
        entry = f"{key}={value}".encode()
        out += bytes([len(entry)]) + entry
    return out


def packets(role: str, nodes: list[list[str]], per_packet: int) -> list[bytes]:
    """The unsolicited responses announcing ``nodes`` (id, address), ``per_packet`` each."""
    out: list[bytes] = []
    for start in range(0, len(nodes), per_packet):
        message = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for node_id, ip in nodes[start : start + per_packet]:
            ann = Announcement(
                node_id=node_id, role=role, ip=ip, port=22, fingerprint=fingerprint_for(node_id)
            )
            name = f"{instance_name(role, node_id)}.{NODE_SERVICE_TYPE}"
            host = f"autoreg-{node_id}.local."
            for record in (
                DNSPointer(NODE_SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, _TTL_OTHER, name),
                DNSService(name, _TYPE_SRV, _CLASS_IN, _TTL_HOST, 0, 0, 22, host),
                DNSText(name, _TYPE_TXT, _CLASS_IN, _TTL_OTHER, _txt_rdata(encode_node(ann))),
                DNSAddress(host, _TYPE_A, _CLASS_IN, _TTL_HOST, socket.inet_aton(ip)),
            ):
                message.add_answer_at_time(record, 0)
        out.extend(message.packets())
    return out


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    nodes: list[list[str]] = spec["nodes"]
    per_packet = int(spec.get("per_packet", 3))
    rate = float(spec.get("rate", 1000.0))
    rounds = int(spec.get("rounds", 2))
    datagrams = packets(spec["role"], nodes, per_packet)
    interval = len(nodes) / len(datagrams) / rate if datagrams else 0.0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(spec["source"]))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.bind((spec["source"], 0))
    try:
        began = 0.0
        for number in range(1, rounds + 1):
            # Pacing, not synchronisation: datagram k leaves at began + k * interval.
            began = max(time.monotonic(), began + 1.0) if number > 1 else time.monotonic()
            now = time.monotonic()
            if began > now:
                time.sleep(began - now)
            for k, datagram in enumerate(datagrams):
                due = began + k * interval
                ahead = due - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                sock.sendto(datagram, MDNS)
            print(json.dumps({"round": number, "sent": len(nodes), "t": time.time()}), flush=True)
    finally:
        sock.close()
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
