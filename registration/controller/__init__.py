"""The registrar side: ingestion, rules, the reconcile loop, SSH paths, hooks, the daemon."""

from __future__ import annotations

from ._daemon import EXIT_INTERRUPTED, Daemon, RegistrationsFactory
from ._hooks import HookResult, find_hook, run_hook
from ._index import NodeIndex
from ._ingest import AddressPolicy, Ingested, ingest
from ._proxies import ProxyPool
from ._reach import AccessFiles, Reach
from ._reconciler import Reconciler
from ._registration import Registration, Registrations
from ._rules import Decision, Registrar, StateView, decide, owns
from ._ssh import load_private_key
from ._tunnels import (
    add_tunnel,
    callback_config_text,
    probe_tunnel_port,
    remove_tunnel,
    sshd_match_block,
    write_authorized_keys,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "AccessFiles",
    "AddressPolicy",
    "Daemon",
    "Decision",
    "HookResult",
    "Ingested",
    "NodeIndex",
    "ProxyPool",
    "Reach",
    "Reconciler",
    "Registrar",
    "Registration",
    "Registrations",
    "RegistrationsFactory",
    "StateView",
    "add_tunnel",
    "callback_config_text",
    "decide",
    "find_hook",
    "ingest",
    "load_private_key",
    "owns",
    "probe_tunnel_port",
    "remove_tunnel",
    "run_hook",
    "sshd_match_block",
    "write_authorized_keys",
]
