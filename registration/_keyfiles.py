"""The registrar's key files: CONTROLLER_KEY, the sshd host-key pin, the HTTPS key pair
(``_tls``), what media carry.

Key material only (files under ``[autoreg] keys_dir`` and the sshd host key); no
state store, so every layer may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from ._config import Config
from ._exceptions import KeyMaterialError
from ._sshkeys import PublicKey, generate_ed25519, read_public_key
from ._tls import ApiIdentity, api_identity, api_identity_init

__all__ = [
    "CONTROLLER_HOST_ALIAS",
    "api_fingerprint",
    "api_keys_init",
    "controller_known_hosts_text",
    "keys_init",
    "keys_show",
    "medium_material",
]

#: The name under which nodes pin the controller's host key (its address may change).
CONTROLLER_HOST_ALIAS: Final = "autoreg-controller"


def keys_init(config: Config) -> tuple[PublicKey, bool]:
    """Create CONTROLLER_KEY unless it exists (idempotent; never overwrites).

    Returns the public key and whether it was created now.
    """
    if config.controller_key.exists():
        return keys_show(config), False
    return generate_ed25519(config.controller_key, comment="autoreg-controller"), True


def keys_show(config: Config) -> PublicKey:
    pub = Path(f"{config.controller_key}.pub")
    if not pub.exists():
        raise KeyMaterialError(
            f"no controller key at {config.controller_key}; create it with `autoreg keys init`"
        )
    return read_public_key(pub)


def api_keys_init(config: Config) -> tuple[ApiIdentity, bool]:
    """The HTTPS key and self-signed certificate of ``[controller] listen``, next to
    CONTROLLER_KEY: created unless both exist (never overwritten)."""
    return api_identity_init(config.keys_dir)


def api_fingerprint(config: Config) -> tuple[str | None, str | None]:
    """(the certificate's ``SHA256:`` fingerprint nodes pin, None) or (None, why not)."""
    try:
        return api_identity(config.keys_dir).fingerprint, None
    except KeyMaterialError as exc:
        return None, str(exc)


def controller_known_hosts_text(config: Config) -> str:
    """The pin a node needs for the controller's sshd (under an alias: addresses change)."""
    key = read_public_key(config.controller.sshd_host_key)
    return f"{CONTROLLER_HOST_ALIAS} {key.key_type} {key.openssh.split()[1]}\n"


def medium_material(config: Config) -> dict[str, Any]:
    """Everything an install medium takes from this controller, besides CONTROLLER_KEY.

    The controller's host-key pin is None (with ``pin_error`` saying why) when the
    sshd host key cannot be read: only media for nodes that call back need it.
    """
    ctl = config.controller
    pin: str | None = None
    pin_error: str | None = None
    try:
        pin = controller_known_hosts_text(config).strip()
    except KeyMaterialError as exc:
        pin_error = str(exc)
    return {
        "controller_user": ctl.ssh_user,
        "controller_pin": pin,
        "controller_pin_source": str(ctl.sshd_host_key),
        "controller_pin_error": pin_error,
        "callback_port": config.callback.port,
        "callback_user": ctl.callback_user,
        "controller_port_range": list(ctl.tunnel_ports),
        "controller_ports_per_node": ctl.tunnel_ports_per_node,
        "callback_key": "one per node: ed25519, OpenSSH format, 0600 on the node "
        "(autoreg media build --callback)",
    }
