"""Start-up refusals every QEMU machine shares (hw/core, system/vl.c),
in QEMU's order, before the machine's own (its ``init``):

0. the machine type -- system/vl.c ``select_machine()``: a versioned type
   older than the binary's oldest (QEMU 10.1+ no longer registers types
   six years old, ``QemuRules.oldest_machine``) is ``unsupported machine
   type``;
1. ``-m`` -- hw/core/machine.c ``machine_set_mem()``: maxmem below RAM;
   slots with maxmem equal to RAM; slots without maxmem;
2. a boot RAM backend the host will not map (:mod:`harness.model.qemu_rules.host`);
3. NUMA sizes that do not add up -- hw/core/numa.c
   ``numa_complete_configuration()``.

Before all of these, a cold-plugged DIMM id given twice is refused as QEMU
parses its command line (:func:`check_coldplug_ids`).  Checked on
qemu-system-x86_64 and qemu-system-aarch64 7.2 (the same words).
"""

from __future__ import annotations

from typing import Any

from harness.devices import memory_device as md
from harness.errors import refuse
from harness.units import format_size


def check_generic_start(spec: Any, ram_id: str) -> None:
    """Steps 0-3 of every machine's start-up refusals (module docstring);
    ``ram_id``: the machine's boot RAM block without NUMA (``pc.ram``,
    ``mach-virt.ram``: MachineClass.default_ram_id)."""
    rules = spec.rules
    oldest = rules.oldest_machine
    if spec.machine_version is not None and oldest is not None and spec.machine_version < oldest:
        q, o = rules.qemu, f"{oldest[0]}.{oldest[1]}"
        raise refuse(
            "machine-type-removed", f"machine type {spec.machine_name} is gone from QEMU "
            f"{q[0]}.{q[1]}, whose oldest {spec.machine} machine type is {o}",
            f'unsupported machine type: "{spec.machine_name}"', value=spec.machine_name,
            limit=oldest, fix=f"use machine type {spec.machine}, or a versioned one from {o} "
            f"on (QEMU {q[0]}.{q[1]} removed the older ones)")
    ram, maxmem = spec.ram_size, spec.maxmem
    if maxmem and maxmem < ram:
        raise refuse(
            "maxmem-below-ram", f"maxmem {format_size(maxmem)} is below the boot memory "
            f"{format_size(ram)}",
            f"invalid value of maxmem: maximum memory size (0x{maxmem:x}) must be at least "
            f"the initial memory size (0x{ram:x})", value=maxmem, limit=ram, fix="raise maxmem")
    if spec.slots and maxmem == ram:
        raise refuse(
            "maxmem-equals-ram", f"slots={spec.slots} but maxmem equals the boot memory, so "
            "there is no room for DIMMs",
            f"invalid value of maxmem: memory slots were specified but maximum memory size "
            f"(0x{maxmem:x}) is equal to the initial memory size (0x{ram:x})", value=maxmem,
            limit=ram, fix="raise maxmem above the boot memory")
    if spec.slots and not maxmem:
        raise refuse("slots-without-maxmem", "slots= needs maxmem=",
                     "slots specified but no max-size", value=spec.slots, limit=None,
                     fix="give maxmem= with slots=, or neither")
    committed = 0
    for i, size in enumerate(spec.numa or (ram,)):
        if size:
            md.check_host(spec, size, f"mem{i}" if spec.numa else ram_id, committed)
            committed += size
    if spec.numa and sum(spec.numa) != ram:
        raise refuse(
            "numa-mismatch",
            f"NUMA node sizes {'+'.join(format_size(n) for n in spec.numa)} do not add up to "
            f"the boot memory {format_size(ram)}",
            f"total memory for NUMA nodes (0x{sum(spec.numa):x}) should equal RAM size "
            f"(0x{ram:x})", value=spec.numa, limit=ram,
            fix="make the node sizes sum to -m")


def check_coldplug_ids(spec: Any) -> None:
    """``-device`` options are QemuOpts, parsed as QEMU reads its command
    line (softmmu/vl.c qemu_init() v7.2.0, system/vl.c v10.0.2:
    ``qemu_opts_parse_noisily(qemu_find_opts("device"), ...)``), before the
    machine exists: util/qemu-option.c ``qemu_opts_create()`` refuses an id
    already in the list, "Duplicate ID '%s' for %s" -- so before every other
    start-up check, and in other words than a hot-add's (qdev_set_id())."""
    seen: set[str] = set()
    for d in spec.coldplug:
        if d.id in seen:
            exc = refuse("duplicate-id", f"cold-plugged DIMM id {d.id!r} is given twice",
                         f"Duplicate ID '{d.id}' for device", value=d.id, limit=None,
                         fix="give every cold-plugged DIMM its own id")
            exc.step = None  # type: ignore[attr-defined]
            exc.coldplug = True  # type: ignore[attr-defined]
            raise exc
        seen.add(d.id)
