"""The etcd backend's trust and tunnel keys: tokens and their uses, install windows,
denied host keys, approvals, settings; reverse tunnels and their ports."""

from __future__ import annotations

import dataclasses
import json
import time

from .._exceptions import StateError
from ._etcd_keys import (
    dump,
    load,
    token_of,
    token_value,
    tunnel_of,
    tunnel_value,
    window_of,
    window_value,
)
from ._etcd_nodes import EtcdNodes
from ._etcd_txn import Txn
from ._machine import Change, LostRace, NodeState, apply_change
from ._records import NodeRecord, Token, Tunnel, Window

__all__ = ["EtcdTrust"]


class EtcdTrust(EtcdNodes):
    """Join tokens, install windows, denied host keys, approvals, settings, tunnels."""

    def consume(self, tx: Txn, rec: NodeRecord, grant: str, now: float) -> None:
        """Spend one use of what admits ``rec``, in ``tx``; LostRace when none is left."""
        kind, _, ident = grant.partition(":")
        if kind == "token":
            token = self._token(tx, ident)
            refusal = (
                f"token {ident} does not exist any more"
                if token is None
                else token.refusal(rec.node_id, rec.fingerprint, rec.role, rec.cluster, now)
            )
            if refusal or token is None:
                raise LostRace(refusal or ident)
            if not any(n == rec.node_id and f == rec.fingerprint for n, f, _ in token.used_by):
                used = (*token.used_by, (rec.node_id, rec.fingerprint, now))
                spent = dataclasses.replace(token, used_by=used)
                tx.put(self.keys.token(ident), token_value(spent))
            data = {"token": ident, "node_id": rec.node_id, "fingerprint": rec.fingerprint}
            self.event(tx, None, "token", None,
                       f"token {ident} used by {rec.label} ({rec.fingerprint})", data)  # fmt: skip
        elif kind == "window":
            window = self._window(tx, ident)
            if window is None or not window.is_open(now):
                raise LostRace(f"install window {ident} is closed")
            window = dataclasses.replace(window, used=window.used + 1)
            tx.put(self.keys.window(ident), window_value(window))
            if window.max_uses is not None and window.used >= window.max_uses:
                self._close_window(tx, window, now, f"sealed after {window.used} registrations")

    # -- tokens --------------------------------------------------------------------------

    def _token(self, tx: Txn, token_id: str) -> Token | None:
        raw = tx.get(self.keys.token(token_id))
        return None if raw is None else token_of(raw, self.keys.token(token_id))

    def tokens(self) -> list[Token]:
        def read(tx: Txn) -> list[Token]:
            found = [token_of(v, k) for k, v in tx.range(self.keys.tokens, compare=False)]
            return sorted(found, key=lambda t: t.created)

        return self._read(read)

    def create_token(self, token: Token) -> Token:
        def build(tx: Txn) -> None:
            if tx.get(self.keys.token(token.token_id)) is not None:
                raise StateError(f"token {token.token_id} exists already")
            tx.put(self.keys.token(token.token_id), token_value(token))
            scope = "/".join(token.roles) or "any role"
            where = f" of cluster {token.cluster}" if token.cluster else ""
            self.event(tx, None, "token", None,
                       f"token {token.token_id} created: {scope}{where}, {token.uses} use(s)"
                       + (f" ({token.description})" if token.description else ""),
                       {"token": token.token_id, **token.to_json()})  # fmt: skip

        self.write(build, what=f"token {token.token_id}")
        return token

    def revoke_token(self, token_id: str) -> Token | None:
        def build(tx: Txn) -> Token | None:
            token = self._token(tx, token_id)
            if token is None or token.revoked is not None:
                return token
            token = dataclasses.replace(token, revoked=time.time())
            tx.put(self.keys.token(token_id), token_value(token))
            self.event(tx, None, "token", None, f"token {token_id} revoked", {"token": token_id})
            return token

        return self.write(build, what=f"token {token_id}")

    # -- install windows -------------------------------------------------------------------

    def _window(self, tx: Txn, window_id: str) -> Window | None:
        raw = tx.get(self.keys.window(window_id))
        return None if raw is None else window_of(raw, self.keys.window(window_id))

    def windows(self) -> list[Window]:
        def read(tx: Txn) -> list[Window]:
            found = [window_of(v, k) for k, v in tx.range(self.keys.windows, compare=False)]
            return sorted(found, key=lambda w: w.opened)

        return self._read(read)

    def _close_window(self, tx: Txn, window: Window, now: float, reason: str) -> None:
        if window.closed is None:
            closed = dataclasses.replace(window, closed=now, closed_reason=reason)
            tx.put(self.keys.window(window.window_id), window_value(closed))
        what = "every role" if window.scope == "*" else f"role {window.scope}"
        self.event(tx, None, "window", None,
                   f"install window {window.window_id} for {what} closed: {reason}",
                   {"window": window.window_id, "scope": window.scope, "open": False})  # fmt: skip

    def open_window(self, window: Window) -> Window:
        def build(tx: Txn) -> None:
            for key, raw in tx.range(self.keys.windows):
                other = window_of(raw, key)
                if other.scope == window.scope and other.closed is None:
                    self._close_window(tx, other, window.opened, "replaced")
            tx.put(self.keys.window(window.window_id), window_value(window))
            what = "every role" if window.scope == "*" else f"role {window.scope}"
            limit = "" if window.max_uses is None else f", at most {window.max_uses} registrations"
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(window.expires))
            data = {"window": window.window_id, "scope": window.scope, "open": True}
            self.event(tx, None, "window", None,
                       f"install window {window.window_id} opened for {what} until {until}"
                       f"{limit}: unsigned announcements are admitted", data)  # fmt: skip

        self.write(build, what=f"install window {window.window_id}")
        return window

    def close_windows(self, scope: str | None, reason: str) -> list[Window]:
        def build(tx: Txn) -> list[Window]:
            now = time.time()
            closed = []
            for key, raw in tx.range(self.keys.windows):
                window = window_of(raw, key)
                if window.closed is None and scope in (None, window.scope):
                    why = "its time ran out" if window.expires <= now else reason
                    self._close_window(tx, window, now, why)
                    closed.append(window)
            return sorted(closed, key=lambda w: w.opened)

        return self.write(build, what="closing install windows")

    # -- denied keys, approvals, settings ---------------------------------------------------

    def deny(self, node_id: str, fingerprint: str, reason: str) -> None:
        def build(tx: Txn) -> None:
            tx.put(self.keys.denied(fingerprint),
                   dump({"node_id": node_id, "at": time.time(), "reason": reason}))  # fmt: skip
            self.event(tx, node_id, "deny", None,
                       f"host key {fingerprint} denied by admin"
                       + (f": {reason}" if reason else "") + "; refused whenever it announces",
                       {"fingerprint": fingerprint})  # fmt: skip

        self.write(build, what=f"denying {fingerprint}")

    def undeny(self, fingerprint: str, node_id: str | None) -> bool:
        def build(tx: Txn) -> bool:
            if tx.get(self.keys.denied(fingerprint)) is None:
                return False
            tx.delete(self.keys.denied(fingerprint))
            self.event(tx, node_id, "deny", None, f"host key {fingerprint} is no longer denied",
                       {"fingerprint": fingerprint})  # fmt: skip
            return True

        return self.write(build, what=f"allowing {fingerprint}")

    def denied(self) -> dict[str, str]:
        def read(tx: Txn) -> dict[str, str]:
            return {self.keys.last(k): str(load(v, k).get("reason", ""))
                    for k, v in tx.range(self.keys.denied_all, compare=False)}  # fmt: skip

        return self._read(read)

    def setting(self, key: str) -> str | None:
        raw = self._read(lambda tx: tx.get(self.keys.setting(key), compare=False))
        return None if raw is None else raw.decode("utf-8", "replace")

    def settings_all(self) -> dict[str, str]:
        def read(tx: Txn) -> dict[str, str]:
            return {self.keys.last(k): v.decode("utf-8", "replace")
                    for k, v in tx.range(self.keys.settings, compare=False)}  # fmt: skip

        return self._read(read)

    def set_setting(self, key: str, value: str) -> None:
        def build(tx: Txn) -> None:
            tx.put(self.keys.setting(key), value.encode())
            self.event(tx, None, "setting", None, f"{key} = {value}", {key: value})

        self.write(build, what=f"setting {key}")

    def approve(self, node_id: str, fingerprint: str, generation: str) -> NodeRecord:
        """Pin ``fingerprint`` as the node's approved key and decide it anew."""

        def build(tx: Txn) -> NodeRecord:
            now = time.time()
            rec = self.node(tx, node_id, now)
            if rec is None or rec.generation != generation:
                raise LostRace(f"{node_id} was forgotten or announced anew meanwhile")
            before = rec
            if fingerprint != rec.fingerprint:
                contender = json.loads(rec.contender) if rec.contender else {}
                if rec.state is not NodeState.CONFLICT or contender.get("fingerprint") != (
                    fingerprint
                ):
                    raise LostRace(
                        f"{node_id} announces {rec.fingerprint}, not {fingerprint}: approve "
                        "the key it announces (`autoreg pending` shows it)"
                    )
                rec = dataclasses.replace(
                    rec, fingerprint=contender["fingerprint"], key_type=contender["key_type"],
                    ip=contender["ip"], port=contender["port"], name=contender.get("name"),
                )  # fmt: skip
            tx.delete(self.keys.denied(fingerprint))
            fresh = apply_change(
                dataclasses.replace(rec, contender=None),
                Change(expect=rec.state, to=NodeState.SEEN,
                       reason=f"approved by admin with host key {fingerprint}", kind="approve",
                       fields={"approved_fp": fingerprint, "attempts": 0, "next_attempt": None}),
                now=now, lease=0.0,
            )  # fmt: skip
            self.put_node(tx, before, fresh)
            if tx.get(self.keys.claim(node_id)) is not None:
                tx.delete(self.keys.claim(node_id))
            self.event(tx, node_id, "approve", fresh.state.value,
                       f"{fresh.label}: approved by admin with host key {fingerprint}",
                       {"fingerprint": fingerprint})  # fmt: skip
            return fresh

        return self.write(build, what=f"approving {node_id}")

    # -- tunnels -------------------------------------------------------------------------------

    def allocate_tunnel(
        self, node_id: str, public_key: str, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
        first, last = port_range

        def build(tx: Txn) -> Tunnel:
            raw = tx.get(self.keys.tunnel(node_id))
            old = tunnel_of(raw, node_id, self.keys.tunnel(node_id)) if raw else None
            ports = list(old.ports) if old else []
            if len(ports) < count:
                taken = {int(self.keys.last(k)) for k, _ in tx.range(self.keys.ports)}
                free = (p for p in range(first, last + 1) if p not in taken)
                new = [p for _, p in zip(range(count - len(ports)), free, strict=False)]
                if len(new) < count - len(ports):
                    raise StateError(
                        f"no free tunnel ports left in {first}-{last}: widen "
                        "[controller] tunnel_ports or remove unused tunnels"
                    )
                for port in new:
                    tx.put(self.keys.port(port), node_id.encode())
                ports += new
            tunnel = Tunnel(node_id, public_key, tuple(sorted(ports)),
                            old.created if old else time.time())  # fmt: skip
            tx.put(self.keys.tunnel(node_id), tunnel_value(tunnel))
            self.event(tx, node_id, "tunnel", None,
                       f"tunnel ports {', '.join(map(str, tunnel.ports))} allocated",
                       {"ports": list(tunnel.ports)})  # fmt: skip
            return tunnel

        return self.write(build, what=f"the tunnel of {node_id}")

    def tunnel(self, node_id: str) -> Tunnel | None:
        raw = self._read(lambda tx: tx.get(self.keys.tunnel(node_id), compare=False))
        return None if raw is None else tunnel_of(raw, node_id, self.keys.tunnel(node_id))

    def tunnels(self) -> list[Tunnel]:
        def read(tx: Txn) -> list[Tunnel]:
            return [tunnel_of(v, self.keys.last(k), k)
                    for k, v in tx.range(self.keys.tunnels, compare=False)]  # fmt: skip

        return sorted(self._read(read), key=lambda t: t.node_id)

    def remove_tunnel(self, node_id: str) -> bool:
        def build(tx: Txn) -> bool:
            raw = tx.get(self.keys.tunnel(node_id))
            if raw is None:
                return False
            for port in tunnel_of(raw, node_id, self.keys.tunnel(node_id)).ports:
                tx.delete(self.keys.port(port))
            tx.delete(self.keys.tunnel(node_id))
            self.event(tx, node_id, "tunnel", None, "tunnel allocation removed", {})
            return True

        return self.write(build, what=f"the tunnel of {node_id}")
