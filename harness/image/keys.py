"""Per-VM SSH keys: a client key for the harness and a host key for the guest.

Both are fresh ed25519 keys made for each booted VM, so no credential is ever
baked into an image and the guest's host key is known in advance and pinned.
(A VM started from a saved state uses the keys saved with that state, in
memhp's private cache: harness.warm.)
They are handed to the guest through QEMU ``-fw_cfg`` files; every file is
written 0600 in the VM's private 0700 directory and never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class GuestKeys:
    host_key_path: Path  # OpenSSH private key for the guest's SSH server
    host_public_line: str  # "ssh-ed25519 AAAA... memhp-guest": pinned by the client
    client_key_path: Path  # OpenSSH private key the harness logs in with
    client_public_line: str
    authorized_keys_path: Path  # the guest root's authorized_keys


def generate_keypair(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key PEM, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, f"{public} {comment}"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_guest_keys(directory: Path) -> GuestKeys:
    """Generate both key pairs into ``directory`` (created 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    host_priv, host_pub = generate_keypair("memhp-guest-host")
    client_priv, client_pub = generate_keypair("memhp-client")
    keys = GuestKeys(
        host_key_path=directory / "host_key", host_public_line=host_pub,
        client_key_path=directory / "client_key", client_public_line=client_pub,
        authorized_keys_path=directory / "authorized_keys",
    )
    _write_private(keys.host_key_path, host_priv)
    _write_private(keys.client_key_path, client_priv)
    _write_private(keys.authorized_keys_path, (client_pub + "\n").encode())
    return keys


def copy_guest_keys(keys: GuestKeys, directory: Path) -> GuestKeys:
    """The same keys copied into ``directory`` (created 0700, files 0600):
    a migration destination serves the same guest, so it hands over the
    same host key and logs in with the same client key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out = GuestKeys(
        host_key_path=directory / "host_key", host_public_line=keys.host_public_line,
        client_key_path=directory / "client_key", client_public_line=keys.client_public_line,
        authorized_keys_path=directory / "authorized_keys",
    )
    for src, dst in ((keys.host_key_path, out.host_key_path),
                     (keys.client_key_path, out.client_key_path),
                     (keys.authorized_keys_path, out.authorized_keys_path)):
        _write_private(dst, src.read_bytes())
    return out
