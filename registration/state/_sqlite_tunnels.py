"""The sqlite backend's tunnel tables: callback keys and their controller ports."""

from __future__ import annotations

import time

from .._exceptions import StateError
from ._records import Tunnel
from ._sqlite_base import Connection

__all__ = ["TunnelTables"]


class TunnelTables(Connection):
    """Reverse-tunnel allocations, ports never shared."""

    # -- tunnels -------------------------------------------------------------------------

    def allocate_tunnel(
        self, node_id: str, public_key: str, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
        first, last = port_range
        with self._write() as conn:
            existing = [
                r[0]
                for r in conn.execute(
                    "SELECT port FROM tunnel_ports WHERE node_id = ? ORDER BY port", (node_id,)
                )
            ]
            conn.execute(
                "INSERT INTO tunnels (node_id, public_key, created) VALUES (?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET public_key = excluded.public_key",
                (node_id, public_key, time.time()),
            )
            if len(existing) < count:
                taken = {
                    r[0]
                    for r in conn.execute(
                        "SELECT port FROM tunnel_ports WHERE port BETWEEN ? AND ?", (first, last)
                    )
                }
                free = (p for p in range(first, last + 1) if p not in taken)
                new = [p for _, p in zip(range(count - len(existing)), free, strict=False)]
                if len(new) < count - len(existing):
                    raise StateError(
                        f"no free tunnel ports left in {first}-{last}: widen "
                        "[controller] tunnel_ports or remove unused tunnels"
                    )
                conn.executemany(
                    "INSERT INTO tunnel_ports (port, node_id) VALUES (?, ?)",
                    [(p, node_id) for p in new],
                )
                existing += new
            self._event(
                conn,
                node_id,
                "tunnel",
                None,
                f"tunnel ports {', '.join(map(str, existing))} allocated",
                {"ports": existing},
            )
        tunnel = self.tunnel(node_id)
        assert tunnel is not None
        return tunnel

    def tunnel(self, node_id: str) -> Tunnel | None:
        rows = self._read("SELECT * FROM tunnels WHERE node_id = ?", (node_id,))
        if not rows:
            return None
        ports = tuple(
            r[0]
            for r in self._read(
                "SELECT port FROM tunnel_ports WHERE node_id = ? ORDER BY port", (node_id,)
            )
        )
        return Tunnel(node_id, rows[0]["public_key"], ports, rows[0]["created"])

    def tunnels(self) -> list[Tunnel]:
        ids = [r[0] for r in self._read("SELECT node_id FROM tunnels ORDER BY node_id")]
        return [t for i in ids if (t := self.tunnel(i)) is not None]

    def remove_tunnel(self, node_id: str) -> bool:
        with self._write() as conn:
            conn.execute("DELETE FROM tunnel_ports WHERE node_id = ?", (node_id,))
            cur = conn.execute("DELETE FROM tunnels WHERE node_id = ?", (node_id,))
            if cur.rowcount:
                self._event(conn, node_id, "tunnel", None, "tunnel allocation removed", {})
            return cur.rowcount > 0
