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

Steps 0-3 and the cold-plugged DIMM ids (refused before all of them) are
every machine's (:mod:`harness.machines.common`).

A second architecture is a sibling module (``harness/machines/arm64.py``
for the arm64 ``virt`` machine) with its own :class:`Machine` values and
one line each in :data:`harness.machines.MACHINES`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness.errors import refuse
from harness.machines.base import Machine
from harness.machines.common import check_coldplug_ids, check_generic_start
from harness.model.layout import compute_layout
from harness.units import GiB

# ACPI_MAX_RAM_SLOTS (QEMU include/hw/acpi/pc-hotplug.h, checked in
# hw/i386/pc.c pc_memory_init()).
ACPI_MAX_RAM_SLOTS = 256


# TARGET_PAGE_SIZE of x86 (target/i386/cpu-param.h: TARGET_PAGE_BITS 12)
TARGET_PAGE_SIZE = 4096


def check_start(spec: Any, layout: Any) -> None:
    """QEMU's start-up refusals, in QEMU's order (module docstring)."""
    check_generic_start(spec, "pc.ram")  # steps 0-3 (harness.machines.common)
    ram = spec.ram_size
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
