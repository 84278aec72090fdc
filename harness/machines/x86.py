"""x86 machines, ``pc`` (i440fx) and ``q35``: what QEMU's hw/i386 gives
them (the RAM split below 4 GiB, the 64-bit PCI hole, the bus a PCI
device is hot-plugged on), what QEMU refuses at start-up, and how memhp
starts and reaches such a guest (binary, kernel image, console).

At start-up QEMU refuses, in this order (:func:`check_start`; each a
:class:`harness.errors.PlanRefused` with a stable ``kind`` and QEMU's
wording in ``qemu_message``; the same in v7.2.0 and v10.0.0):

0. the machine type -- system/vl.c ``select_machine()``: a versioned type
   older than the binary's oldest (QEMU 10.1+ no longer registers types
   six years old, ``QemuRules.oldest_machine``) is ``unsupported machine
   type``;
1. ``-m`` -- hw/core/machine.c ``machine_set_mem()``: maxmem below RAM;
   slots with maxmem equal to RAM;
2. a boot RAM backend the host will not map (:mod:`harness.model.qemu_rules.host`);
3. NUMA sizes that do not add up -- hw/core/numa.c
   ``numa_complete_configuration()``;
4. hw/i386/pc.c ``pc_memory_init()``: the max used address beyond
   phys-bits (after the AMD 1 TiB relocation, see :mod:`harness.model.layout`);
   more than ACPI_MAX_RAM_SLOTS (256) slots when maxmem > RAM; then maxmem
   not a multiple of TARGET_PAGE_SIZE (4 KiB).

Before all of these, a cold-plugged DIMM id given twice is refused as QEMU
parses its command line (:func:`check_coldplug_ids`).

A second architecture is a sibling module (``harness/machines/arm64.py``
for the arm64 ``virt`` machine) with its own :class:`Machine` values and
one line each in :data:`harness.machines.MACHINES`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness.devices import memory_device as md
from harness.errors import refuse
from harness.machines.base import Machine
from harness.model.layout import compute_layout
from harness.units import GiB, format_size

# ACPI_MAX_RAM_SLOTS (QEMU include/hw/acpi/pc-hotplug.h, checked in
# hw/i386/pc.c pc_memory_init()).
ACPI_MAX_RAM_SLOTS = 256


# TARGET_PAGE_SIZE of x86 (target/i386/cpu-param.h: TARGET_PAGE_BITS 12)
TARGET_PAGE_SIZE = 4096


def check_start(spec: Any, layout: Any) -> None:
    """QEMU's start-up refusals, in QEMU's order (module docstring)."""
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
            md.check_host(spec, size, f"mem{i}" if spec.numa else "pc.ram", committed)
            committed += size
    if spec.numa and sum(spec.numa) != ram:
        raise refuse(
            "numa-mismatch",
            f"NUMA node sizes {'+'.join(format_size(n) for n in spec.numa)} do not add up to "
            f"the boot memory {format_size(ram)}",
            f"total memory for NUMA nodes (0x{sum(spec.numa):x}) should equal RAM size "
            f"(0x{ram:x})", value=spec.numa, limit=ram,
            fix="make the node sizes sum to -m")
    limit = (1 << layout.phys_bits) - 1
    if layout.max_used_gpa > limit:
        lm = spec.cpu.long_mode
        raise refuse(
            "phys-bits", "the highest guest-physical address the machine uses "
            + (f"({layout.max_used_gpa:#x}: RAM, device memory and the 64-bit PCI hole) is "
               f"beyond what {layout.phys_bits} phys-bits address" if lm else
               f"({layout.max_used_gpa:#x}) is beyond what a 32-bit vCPU (lm=off, "
               f"{layout.phys_bits} phys-bits, set by QEMU) addresses"),
            f"Address space limit 0x{limit:x} < 0x{layout.max_used_gpa:x} phys-bits too low "
            f"({layout.phys_bits})", value=layout.max_used_gpa, limit=limit,
            fix="use a smaller maxmem or fewer slots, or "
                + ("more phys-bits (-cpu ...,phys-bits=N)" if lm
                   else "a 64-bit vCPU (drop lm=off)"))
    if ram < spec.maxram and spec.slots > ACPI_MAX_RAM_SLOTS:
        raise refuse(
            "too-many-slots", f"slots={spec.slots} exceeds ACPI_MAX_RAM_SLOTS "
            f"({ACPI_MAX_RAM_SLOTS})", f"unsupported amount of memory slots: {spec.slots}",
            value=spec.slots, limit=ACPI_MAX_RAM_SLOTS,
            fix=f"use at most {ACPI_MAX_RAM_SLOTS} slots")
    if ram < spec.maxram and spec.maxram % TARGET_PAGE_SIZE:
        # pc_memory_init(), after the slots (v7.2.0, v10.0.2; QEMU's "by" kept)
        raise refuse(
            "maxmem-misaligned", f"maxmem {spec.maxram} is not a multiple of "
            f"{TARGET_PAGE_SIZE} bytes (the guest page size)",
            f"maximum memory size must by aligned to multiple of {TARGET_PAGE_SIZE} bytes",
            value=spec.maxram, limit=TARGET_PAGE_SIZE,
            fix="give maxmem in whole KiB multiples of 4 (e.g. 32G)")


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


def pc_ram_split(ram: int) -> tuple[int, str]:
    """hw/i386/pc_piix.c ``pc_init1()``: RAM below 4 GiB and why."""
    if ram >= 0xE0000000:
        return 0xC0000000, ("pc: RAM >= 3.5G, so the split moves to 3G for 1G alignment "
                            "(pc_piix.c pc_init1, gigabyte_align)")
    return 0xE0000000, "pc: up to 3.5G of RAM sits below 4G (pc_piix.c pc_init1)"


def q35_ram_split(ram: int) -> tuple[int, str]:
    """hw/i386/pc_q35.c ``pc_q35_init()``: RAM below 4 GiB and why."""
    if ram >= 0xB0000000:
        return 0x80000000, ("q35: RAM >= 2.75G, so only 2G sits below 4G "
                            "(pc_q35.c pc_q35_init: PCI hole + MMCONFIG)")
    return 0xB0000000, "q35: up to 2.75G of RAM sits below 4G (pc_q35.c pc_q35_init)"


# pci_hole64_size: PCI_HOST_PROP_PCI_HOLE64_SIZE defaults, hw/pci-host/i440fx.c
# (2 GiB) and q35.c (32 GiB); the bus a bus-less PCI device lands on: pc's
# pci.0 takes hot-plugged devices, q35's PCIe root bus pcie.0 does not
PC = Machine(name="pc", arch="x86_64", type_prefix="pc-i440fx",
             qemu_binary="qemu-system-x86_64", console="ttyS0", kernel_image="vmlinuz",
             ram_split=pc_ram_split, layout=compute_layout, pci_hole64_size=2 * GiB,
             pci_bus="pci.0",
             pci_bus_hotplug=True, check_start=check_start, check_coldplug=check_coldplug_ids,
             acpi_memory_hotplug=True)
Q35 = replace(PC, name="q35", type_prefix="pc-q35", ram_split=q35_ram_split,
              pci_hole64_size=32 * GiB, pci_bus="pcie.0", pci_bus_hotplug=False)
