"""The seed spec's test topology as autoreg stations: CLC+Walrus / CC1+SC1 / NC1 /
CC2+SC2 / NC2, on whatever networks a test puts each station.

:func:`build` makes the stations with real sshd, the shipped hooks from ``scripts/``
(linked, as autoreg-controller installs them), a credentials file for them to copy,
``trust = token`` everywhere and a join token on every node (token files, as install
media carry them).  Nodes named in ``unicast`` also post to the CLC's HTTPS endpoint
(``[controller] listen``), pinning its certificate.  :func:`boot` starts the three
registrars, then every node in the worst order (NCs and SCs before their CCs);
:func:`check` waits until every component is registered and asserts the scenario's
promise: each registered exactly once (one row, one ``registered`` event, one hook
run in the shipped registry), in dependency order.

Each component is a host of its own, as in the demo: a "+" in the spec (CLC+Walrus,
CC1+SC1) means one machine, which autoreg does not allow, because one host key is one
node and a registrar never registers its own address (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from registration.state import NodeRecord, NodeState, Source

from .autoreg_lab import AutoregLab, Station
from .netlab import Lab

__all__ = ["API_PORT", "Cloud", "boot", "build", "check"]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
API_PORT = 8443
CLUSTERS = ("c1", "c2")
#: Every component ends registered within this many seconds of booting.
REGISTERED_WITHIN = 90.0


@dataclasses.dataclass
class Cloud:
    alab: AutoregLab
    clc: Station
    walrus: Station
    cc: dict[str, Station]
    sc: dict[str, Station]
    nc: dict[str, Station]

    @property
    def clc_nodes(self) -> list[Station]:
        return [self.walrus, *self.cc.values(), *self.sc.values()]

    def url(self) -> str:
        return f"https://{self.clc.host.ip}:{API_PORT}"


def _registrar(alab: AutoregLab, name: str, role: str, hooks: Iterable[str], lab: Lab,
               cluster: str | None = None) -> Station:  # fmt: skip
    station = alab.registrar(name, role, cluster=cluster, node_role=role if cluster else None,
                             lab=lab)  # fmt: skip
    station.hooks_dir.mkdir(parents=True, exist_ok=True)
    for hook in hooks:  # linked: the shipped hooks find their lib/ through readlink -f
        (station.hooks_dir / hook).symlink_to(SCRIPTS / hook)
    credentials = station.host.workdir / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / f"{name}.key").write_text(f"placeholder credential of {name}\n")
    station.extra["controller"] = {"trust": "token"}
    return station


def _token(registrar: Station, *args: str) -> str:
    return registrar.cli("token", "create", *args).stdout.strip().splitlines()[-1]


def _give(node: Station, token: str) -> None:
    path = node.host.workdir / "join_token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    node.extra.setdefault("node", {})["token_file"] = str(path)


def build(alab: AutoregLab, where: Mapping[str, Lab], *, unicast: Iterable[str] = ()) -> Cloud:
    """The stations, each on the network ``where`` names (default: the AutoregLab's)."""

    def lab(name: str) -> Lab:
        return where.get(name, alab.lab)

    clc = _registrar(alab, "clc", "clc", ("walrus", "cc", "sc"), lab("clc"))
    cc = {c: _registrar(alab, f"cc{i}", "cc", ("nc",), lab(f"cc{i}"), c)
          for i, c in enumerate(CLUSTERS, 1)}  # fmt: skip
    walrus = alab.node("walrus", "walrus", lab=lab("walrus"))
    sc = {c: alab.node(f"sc{i}", "sc", cluster=c, lab=lab(f"sc{i}"))
          for i, c in enumerate(CLUSTERS, 1)}  # fmt: skip
    nc = {c: alab.node(f"nc{i}", "nc", cluster=c, lab=lab(f"nc{i}"))
          for i, c in enumerate(CLUSTERS, 1)}  # fmt: skip
    alab.authorize_all()
    cloud = Cloud(alab, clc, walrus, cc, sc, nc)
    for_clc = _token(clc, "--role", "walrus", "--role", "cc", "--role", "sc", "--uses", "5")
    for node in cloud.clc_nodes:
        _give(node, for_clc)
    for cluster, registrar in cc.items():
        _give(nc[cluster], _token(registrar, "--role", "nc", "--cluster", cluster))
    posting = set(unicast)
    if posting:
        clc.extra["controller"]["listen"] = f"{clc.host.ip}:{API_PORT}"
        pin = json.loads(clc.cli("keys", "show", "--json").stdout)["api_fingerprint"]
        for node in [*cloud.clc_nodes, *nc.values()]:
            if node.host.name in posting:
                node.extra["node"].update(registrar=cloud.url(), registrar_fingerprint=pin)
    return cloud


def boot(cloud: Cloud) -> None:
    """The registrars, then the nodes in the worst order (NCs and SCs before their CCs)."""
    for registrar in (cloud.clc, *cloud.cc.values()):
        registrar.start_daemon()
    for node in (*cloud.nc.values(), *cloud.sc.values(), *cloud.cc.values(), cloud.walrus):
        node.start_announcer()


def _registered(registrar: Station, node: Station) -> NodeRecord:
    rec = registrar.wait_state(node.node_id, NodeState.REGISTERED, timeout=REGISTERED_WITHIN)
    assert rec.registered_at is not None
    return rec


def _began(registrar: Station, node: Station) -> float:
    """When its registration began: the first time it was ``registering``."""
    return min(e.ts for e in registrar.events(node.node_id) if e.state == "registering")


def check(cloud: Cloud, *, unicast: Iterable[str] = ()) -> dict[str, NodeRecord]:
    """Every component registered exactly once, in dependency order; the records."""
    clc = cloud.clc
    recs = {n.host.name: _registered(clc, n) for n in cloud.clc_nodes}
    for cluster, cc in cloud.cc.items():
        recs[cloud.nc[cluster].host.name] = _registered(cc, cloud.nc[cluster])
    # one row per component, on the registrar that owns it, and nothing else there
    assert sorted(r.node_id for r in _nodes(clc)) == sorted(n.node_id for n in cloud.clc_nodes)
    for cluster, cc in cloud.cc.items():
        assert [r.node_id for r in _nodes(cc)] == [cloud.nc[cluster].node_id]
    # exactly once: one registration event, one line in the shipped hook's registry
    for registrar, nodes in [(clc, cloud.clc_nodes),
                             *((cc, [cloud.nc[c]]) for c, cc in cloud.cc.items())]:  # fmt: skip
        for node in nodes:
            kinds = [e.kind for e in registrar.events(node.node_id)]
            assert kinds.count("registered") == 1, (node.host.name, kinds)
            registry = registrar.state_dir / "registry" / f"{node.role}.tsv"
            lines = registry.read_text().splitlines()
            ids = [line.split("\t")[1] for line in lines if not line.startswith("#")]
            assert ids.count(node.node_id) == 1, (registry, ids)
            assert node.receipt.exists()
            assert (node.receipt.parent / "credentials").is_dir()  # the hook's work
    # in dependency order: an SC after its CC (on the CLC), an NC after its CC
    for cluster, cc in cloud.cc.items():
        cc_done = recs[cc.host.name].registered_at
        assert cc_done is not None
        assert _began(clc, cloud.sc[cluster]) >= cc_done
        assert _began(cc, cloud.nc[cluster]) >= cc_done
    # Admitted by its join token.  (Not ``auth``: that is how the node's latest record
    # was signed, and a registered node announces unsigned, its token used up.)
    for name in unicast:
        assert (recs[name].granted or "").startswith("token:"), recs[name]
    return recs


def _nodes(registrar: Station) -> list[NodeRecord]:
    from .sync_store import SyncStore

    with SyncStore(registrar.state_dir / "autoreg.db", readonly=True) as store:
        nodes: list[NodeRecord] = store.nodes()
        return nodes


def sources(registrar: Station, node: Station) -> set[Source]:
    """Where the registrar heard ``node`` from (its ``announced`` events)."""
    found = set()
    for event in registrar.events(node.node_id):
        source = event.data.get("source") if isinstance(event.data, dict) else None
        if source:
            found.add(Source(source))
    return found
