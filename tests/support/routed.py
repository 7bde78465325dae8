"""Several :mod:`netlab` networks joined by real routers: the spec's "three adjacent
networks" and "two remote networks".

:class:`RoutedLabs` owns N :class:`~support.netlab.Lab` s (each its own bridge and
``198.18.<index>.0/24``).  :meth:`RoutedLabs.router` makes a host on one network and
plugs it into another (``Lab.attach``: ``eth1``), with IPv4 forwarding on in its
namespace and nothing else: no multicast routing, so mDNS stays on each network
unless something reflects it (an avahi-daemon with ``enable-reflector=yes``:
``support.avahi.start_avahi(router, reflector=True)``).  :meth:`RoutedLabs.route`
gives every host (routers included) a route to every other network through the
next router on the way (breadth-first over the networks), so unicast goes
anywhere: SSH from a registrar to a node two networks away, a node's HTTPS post.

Nothing touches the root namespace; :meth:`close` (and the context manager) closes
every lab, which kills their processes and deletes their namespaces.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from types import TracebackType

from .netlab import Host, Lab

__all__ = ["RoutedLabs", "Router"]


@dataclasses.dataclass
class Router:
    host: Host
    #: network number (position in ``RoutedLabs.labs``) -> this router's address there
    addresses: dict[int, str]


class RoutedLabs:
    """Networks joined by routers; ``labs[i]`` is network ``i``."""

    def __init__(self, workdir: Path, indices: list[int]) -> None:
        self.labs: list[Lab] = []
        self.routers: list[Router] = []
        self._routed: set[str] = set()
        try:
            for n, index in enumerate(indices):
                self.labs.append(Lab(Path(workdir) / f"net{n}", index=index))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RoutedLabs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    def subnet(self, n: int) -> str:
        return self.labs[n].subnet

    def router(self, name: str, first: int, second: int) -> Host:
        """A router between networks ``first`` (its eth0) and ``second`` (eth1)."""
        host = self.labs[first].add_host(name)
        other = self.labs[second].attach(host)
        host.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], timeout=15)
        self.routers.append(Router(host, {first: host.ip, second: other}))
        return host

    def network_of(self, host: Host) -> int:
        return next(n for n, lab in enumerate(self.labs) if lab is host.lab)

    def _next_hops(self, start: set[int], me: Router | None) -> dict[int, str]:
        """For each network not in ``start``: the address of the first router on the way."""
        hops: dict[int, str] = {}
        seen = set(start)
        queue = collections.deque((n, None) for n in start)  # (network, first hop)
        while queue:
            network, first = queue.popleft()
            for router in self.routers:
                if router is me or network not in router.addresses:
                    continue
                hop = first or router.addresses[network]
                for beyond in router.addresses:
                    if beyond not in seen:
                        seen.add(beyond)
                        hops[beyond] = hop
                        queue.append((beyond, hop))
        return hops

    def route(self) -> None:
        """Routes to every network for every host not routed yet (call after adding hosts)."""
        for router in self.routers:
            self._add_routes(router.host, set(router.addresses), router)
        for n, lab in enumerate(self.labs):
            for host in lab.hosts.values():
                if all(host is not r.host for r in self.routers):
                    self._add_routes(host, {n}, None)

    def _add_routes(self, host: Host, start: set[int], me: Router | None) -> None:
        if host.netns in self._routed:
            return
        for network, hop in sorted(self._next_hops(start, me).items()):
            host.run([host.lab.ip_bin, "route", "add", self.subnet(network), "via", hop],
                     timeout=15)  # fmt: skip
        self._routed.add(host.netns)

    def close(self) -> None:
        errors = []
        for lab in reversed(self.labs):
            try:
                lab.close()
            except Exception as exc:  # close them all, then report
                errors.append(exc)
        if errors:
            raise errors[0]
