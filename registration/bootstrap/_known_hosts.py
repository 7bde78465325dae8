"""Host keys of bootstrap targets: verified against a known_hosts file, or learnt once.

Before anything is copied or run, the key a target's sshd presents must be one
the operator knows (an OpenSSH known_hosts file; hashed entries work).  A host
that is not in it is refused, unless ``--accept-new`` says to trust it on first
use; either way the key is recorded there, so every later run verifies it, and
a changed key is always refused.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Final

import paramiko

from .._exceptions import ConfigError
from .._sshkeys import fingerprint_of_blob
from ._targets import Target

__all__ = ["KnownHosts", "fingerprint_of_key"]

#: Key types in the order a target's key is looked up (and asked for, when learnt).
PREFERRED: Final = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-rsa")


def fingerprint_of_key(key: paramiko.PKey) -> str:
    return fingerprint_of_blob(base64.b64decode(key.get_base64()))


class KnownHosts:
    """One known_hosts file, read once; keys learnt are appended (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys = paramiko.HostKeys()
        if path.exists():
            try:
                self._keys.load(str(path))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise ConfigError(f"--known-hosts {path}: cannot read it ({exc})") from exc

    def lookup(self, target: Target) -> paramiko.PKey | None:
        """The key recorded for ``target`` (the preferred type when several are)."""
        with self._lock:
            found = self._keys.lookup(target.key)
        if not found:
            return None
        for key_type in PREFERRED:
            if key_type in found:
                return found[key_type]
        return next(iter(found.values()))

    def record(self, target: Target, key: paramiko.PKey) -> None:
        """Append ``target``'s key (first use): later runs verify against it."""
        line = f"{target.key} {key.get_name()} {key.get_base64()}\n"
        with self._lock:
            self._keys.add(target.key, key.get_name(), key)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="ascii") as fh:
                fh.write(line)
