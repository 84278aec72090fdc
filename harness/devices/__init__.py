"""Memory device kinds, one package each, and the registry that names them.

A kind is a package ``harness/devices/<kind>/`` (see :mod:`.base` for what
its modules hold) and one line in :data:`KINDS`.  The registry names
packages as strings, so the pure model imports a kind's ``model`` without
its live acts: :func:`model_of` and :func:`live_of` import on demand.
"""

from __future__ import annotations

import importlib
from typing import Any

# kind (QEMU's device name, the TOML ``device =`` value) -> package
KINDS: dict[str, str] = {
    "pc-dimm": "harness.devices.pc_dimm",
    "virtio-mem": "harness.devices.virtio_mem",
}


def _module(kind: str, part: str) -> Any:
    try:
        package = KINDS[kind]
    except KeyError:
        raise KeyError(f"no memory device kind {kind!r} (known: {', '.join(KINDS)})") from None
    return importlib.import_module(f"{package}.{part}")


def ops_of(kind: str) -> Any:
    """The kind's operations and the keys of its ``add`` step (pure)."""
    return _module(kind, "ops")


def model_of(kind: str) -> Any:
    """The kind's pure model (:class:`.base.DeviceModel`)."""
    return _module(kind, "model").MODEL


def qemu_of(kind: str) -> Any:
    """The kind's QEMU records (command line, QMP, pinned properties)."""
    return _module(kind, "qemu")


def live_of(kind: str) -> Any:
    """The kind's acts on a running VM."""
    return _module(kind, "live")
