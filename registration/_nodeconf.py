"""The node configuration a registrar hands out: ``tunnel add`` prints it, media carry it.

One renderer for both, so the ``[callback]`` section a node gets is the same
whichever way it reaches the node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._config import Config

__all__ = ["callback_section", "node_section", "render_conf"]


def callback_section(
    config: Config,
    *,
    controller: str,
    key_path: str,
    known_hosts_path: str,
    ports: Sequence[int],
) -> dict[str, str]:
    """The node's ``[callback]`` keys for one tunnel allocation on this controller."""
    return {
        "controller": controller,
        "port": str(config.callback.port),
        "user": config.controller.callback_user,
        "key": key_path,
        "known_hosts": known_hosts_path,
        "listen_ports": ", ".join(map(str, ports)),
    }


def node_section(
    *,
    role: str,
    cluster: str | None,
    node_id: str,
    name: str,
    token_file: str | None = None,
    registrar: tuple[str, str] | None = None,
    **more: str,
) -> dict[str, str]:
    """The node's ``[node]`` keys: who it is, its token, its registrar (URL, pin), ``more``."""
    section = {"role": role}
    if cluster:
        section["cluster"] = cluster
    section.update(id=node_id, name=name, **more)
    if token_file is not None:
        section["token_file"] = token_file
    if registrar is not None:
        section.update(registrar=registrar[0], registrar_fingerprint=registrar[1])
    return section


def render_conf(sections: Mapping[str, Mapping[str, str]], *, header: Sequence[str] = ()) -> str:
    """INI text, ``# header`` lines first; values are written as given (validated upstream)."""
    lines = [f"# {line}" for line in header]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
