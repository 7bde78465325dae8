#!/usr/bin/env python3
"""What checking a signed announcement costs the registrar; prints one JSON object.

For N records as python-zeroconf delivers them (raw TXT bytes), it times, in the
same run: decoding an unsigned record (the baseline every announcement pays),
decoding a signed one, and the signature check itself (HMAC-SHA256 over the
canonical encoding, the timestamp window).  No network, no root.

    python bench/signature.py [--records N] [--json-out FILE]

Goal: the check costs under 1 ms per announcement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, summarize

GOAL_CHECK_S = 0.001


def _records(n: int, signed: bool) -> list[dict[bytes, bytes | None]]:
    from registration.protocol import Announcement, encode_node, new_token

    token = new_token()
    now = time.time()
    out = []
    for i in range(n):
        ann = Announcement(
            node_id=f"node-{i:06d}",
            role="nc",
            cluster="foo",
            ip=f"198.18.{i // 250}.{i % 250 + 1}",
            port=22,
            fingerprint="SHA256:" + f"{i:043d}",
            name=f"nc{i}",
        )
        txt = encode_node(ann, token=token if signed else None, now=now)
        out.append({k.encode(): v.encode() for k, v in txt.items()})
    _records.token = token  # type: ignore[attr-defined]
    return out


def _per_record(fn: Any, items: list[Any], rounds: int) -> list[float]:
    """Seconds per item, one figure per round (the median of rounds is reported)."""
    figures = []
    for _ in range(rounds):
        started = time.perf_counter()
        for item in items:
            fn(item)
        figures.append((time.perf_counter() - started) / len(items))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=5000, metavar="N")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json-out", type=Path, metavar="FILE")
    args = p.parse_args(argv)
    from registration.protocol import SIGNATURE_WINDOW, decode_node, verify

    unsigned = _records(args.records, signed=False)
    signed = _records(args.records, signed=True)
    token = _records.token  # type: ignore[attr-defined]
    now = time.time()
    claims = [decode_node(r, 22).signature for r in signed]
    assert all(c is not None and verify(c, token.key, now=now, window=SIGNATURE_WINDOW) is None
               for c in claims)  # fmt: skip
    decode_unsigned = _per_record(lambda r: decode_node(r, 22), unsigned, args.rounds)
    decode_signed = _per_record(lambda r: decode_node(r, 22), signed, args.rounds)
    check = _per_record(
        lambda c: verify(c, token.key, now=now, window=SIGNATURE_WINDOW), claims, args.rounds
    )
    median = sorted(check)[len(check) // 2]
    added = (
        sorted(decode_signed)[len(decode_signed) // 2]
        - sorted(decode_unsigned)[len(decode_unsigned) // 2]
    )
    report: dict[str, Any] = {
        "benchmark": "signature",
        "records": args.records,
        "rounds": args.rounds,
        "decode_unsigned_s": summarize(decode_unsigned, 7),
        "decode_signed_s": summarize(decode_signed, 7),
        "verify_s": summarize(check, 7),
        "check_per_announcement_s": round(median + added, 7),
        "ratio_signed_to_unsigned_handling": round(
            (median + sorted(decode_signed)[len(decode_signed) // 2])
            / sorted(decode_unsigned)[len(decode_unsigned) // 2],
            3,
        ),
        "goal_check_s": GOAL_CHECK_S,
        "goal_met": median + added < GOAL_CHECK_S,
        "environment": environment(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
