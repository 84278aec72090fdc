"""QEMU machines memhp models, one module per architecture, one line each.

A machine is a :class:`.base.Machine` value in its architecture's module
(:mod:`.x86`: ``pc``, ``q35``; :mod:`.arm64`: ``virt``); :data:`MACHINES`
names it by module path, so looking up a name imports only that module.
"""

from __future__ import annotations

import importlib

from harness.machines.base import Machine

# -machine alias -> "module:attribute"
MACHINES: dict[str, str] = {
    "pc": "harness.machines.x86:PC",
    "q35": "harness.machines.x86:Q35",
    "virt": "harness.machines.arm64:VIRT",
}


def machine(name: str) -> Machine:
    """The machine called ``name`` (KeyError naming the known ones)."""
    try:
        where = MACHINES[name]
    except KeyError:
        raise KeyError(f"no machine {name!r} (known: {', '.join(MACHINES)})") from None
    module, attr = where.split(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
