"""QEMU's x86 guest-physical memory layout and the guest's block size.

Rules, from QEMU 7.2 (Debian 12) unless noted:

RAM split below/above 4 GiB
  * ``pc`` -- ``hw/i386/pc_piix.c`` ``pc_init1()``: ``lowmem`` starts as
    ``max_ram_below_4g`` (default 0xe0000000, 3.5 GiB); if the RAM does not
    fit below it and the machine type has ``gigabyte_align`` (every type
    since 2.1), ``lowmem`` is lowered to 0xc0000000 (3 GiB) so that RAM
    above 4 GiB stays 1 GiB aligned.  RAM >= lowmem is split at lowmem.
  * ``q35`` -- ``hw/i386/pc_q35.c`` ``pc_q35_init()``: ``lowmem`` is
    0x80000000 (2 GiB) when RAM >= 0xb0000000 (2.75 GiB), else 0xb0000000,
    leaving room for the PCI hole and the 256 MiB MMCONFIG window.
Device-memory (hotplug) region
  * ``hw/i386/pc.c`` ``pc_memory_init()`` / ``pc_get_device_memory_range()``:
    only when ``ram_size < maxram_size``; base = ROUND_UP(4 GiB +
    above_4g, 1 GiB); size = maxmem - ram_size, plus 1 GiB per slot when
    ``enforce_aligned_dimm`` (every type since 2.2) "assuming 1G page max
    alignment per slot".  The region exists whenever maxmem > RAM, with or
    without slots (v7.2.0 and v10.0.0 alike).
The 64-bit PCI hole, the 1 TiB relocation and phys-bits
  * ``hw/i386/pc.c`` ``pc_pci_hole64_start()``: ROUND_UP(end of the
    device-memory region, or of RAM above 4G without one, 1 GiB);
    ``pc_max_used_gpa()``: that + the hole's size - 1 for a 64-bit CPU.
    The size is the host bridge's ``pci-hole64-size``: 2 GiB on pc
    (I440FX_PCI_HOST_HOLE64_SIZE_DEFAULT, hw/pci-host/i440fx.c), 32 GiB on
    q35 (Q35_PCI_HOST_HOLE64_SIZE_DEFAULT, hw/pci-host/q35.c).
  * ``pc_memory_init()``: with an AMD vCPU and ``enforce_amd_1tb_hole``
    (machine types 7.1+), RAM above 4G starts at 1 TiB (AMD_ABOVE_1TB_START)
    when the max used address reaches AMD_HT_START (0xfd00000000); the
    device-memory region and the PCI hole move with it.  Then QEMU exits
    with "Address space limit ... phys-bits too low" when the max used
    address exceeds 2^phys-bits - 1 (predicted in :mod:`.predict`).
Memory block size
  * kernel ``arch/x86/mm/init_64.c`` ``probe_memory_block_size()``: 128 MiB
    (MIN_MEMORY_BLOCK_SIZE) when the end of boot RAM is below 64 GiB
    (MEM_SIZE_FOR_LARGE_BLOCK); otherwise, under a hypervisor, the largest
    power of two from 2 GiB down to 128 MiB that the end of boot RAM is
    aligned to; 2 GiB on bare metal.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.model.spec import MachineSpec
from harness.units import GiB, MiB, TiB

FOUR_GIB = 4 * GiB
MIN_MEMORY_BLOCK_SIZE = 128 * MiB
MAX_BLOCK_SIZE = 2 * GiB
MEM_SIZE_FOR_LARGE_BLOCK = 64 * GiB
# hw/i386/pc.c (v7.2.0, v10.0.0): the AMD HyperTransport hole below 1 TiB
# and where RAM above 4G moves to on AMD vCPUs.
AMD_HT_START = 0xFD00000000
AMD_ABOVE_1TB_START = TiB
# Default pci-hole64-size per host bridge (hw/pci-host/i440fx.c, q35.c).
# QEMU_VMALLOC_ALIGN on an x86_64 Linux host (include/qemu/osdep.h): the
# alignment anonymous RAM backends report (Layout.dimm_align, shown as the
# default); each DIMM is aligned to its own backend's alignment
# (harness.model.backend.BackendSpec.alignment, memory_device_pre_plug()).
BACKEND_ALIGN = 2 * MiB


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True)
class Layout:
    """Where everything is in the guest-physical address space."""

    machine: str
    below_4g: int
    above_4g: int
    device_base: int  # 0 when there is no device-memory region
    device_size: int
    block_size: int
    boot_mem_end: int
    dimm_align: int
    why: str
    above_4g_start: int = FOUR_GIB
    max_used_gpa: int = 0
    phys_bits: int = 40

    @property
    def device_end(self) -> int:
        return self.device_base + self.device_size


def ram_split(spec: MachineSpec) -> tuple[int, int, str]:
    """(below_4g, above_4g, explanation) for ``spec``."""
    ram = spec.ram_size
    lowmem, why = spec.machine_model.ram_split(ram)
    if ram >= lowmem:
        return lowmem, ram - lowmem, why
    return ram, 0, why


def default_block_size(boot_mem_end: int, hypervisor: bool = True) -> int:
    """probe_memory_block_size() of arch/x86/mm/init_64.c (Linux 5.x-6.x)."""
    if boot_mem_end < MEM_SIZE_FOR_LARGE_BLOCK:
        return MIN_MEMORY_BLOCK_SIZE
    if not hypervisor:
        return MAX_BLOCK_SIZE
    bz = MAX_BLOCK_SIZE
    while bz > MIN_MEMORY_BLOCK_SIZE:
        if boot_mem_end % bz == 0:
            break
        bz >>= 1
    return bz


def _max_used_gpa(spec: MachineSpec, above: int, above_start: int) -> int:
    """hw/i386/pc.c pc_max_used_gpa(): the end of the 64-bit PCI hole - 1,
    unless the vCPU counts as 32-bit (``QemuRules.gpa_32bit``): in 7.2
    phys-bits <= 32, whose answer is 2^phys-bits - 1; since 8.2 no long
    mode, whose answer is that too for machine types up to 8.1
    (``broken_32bit_mem_addr_check``), else the end of device memory, or of
    RAM above 4G, - 1."""
    rules, cpu = spec.rules, spec.cpu
    end = above_start + above
    if spec.ram_size < spec.maxram:
        base, size = _device_region(spec, end)
        end = base + size
    if rules.gpa_32bit == "phys-bits" and cpu.phys_bits <= 32:
        return (1 << cpu.phys_bits) - 1
    if rules.gpa_32bit == "long-mode" and not cpu.long_mode:
        if rules.broken_32bit_mem_addr_check:
            return (1 << cpu.phys_bits) - 1
        return end - 1
    return _round_up(end, GiB) + spec.machine_model.pci_hole64_size - 1


def _device_region(spec: MachineSpec, above_4g_end: int) -> tuple[int, int]:
    """hw/i386/pc.c pc_get_device_memory_range()."""
    return (_round_up(above_4g_end, GiB),
            spec.maxram - spec.ram_size + GiB * spec.slots)


def compute_layout(spec: MachineSpec) -> Layout:
    below, above, why = ram_split(spec)
    above_start = FOUR_GIB
    if (spec.rules.enforce_amd_1tb_hole and spec.cpu.is_amd
            and _max_used_gpa(spec, above, FOUR_GIB) >= AMD_HT_START):
        above_start = AMD_ABOVE_1TB_START
        why += ("; the highest used address would reach the AMD HyperTransport hole at "
                "0xfd00000000, so RAM above 4G (and everything after it) starts at 1 TiB "
                "(pc.c pc_memory_init, AMD vCPU, machine type 7.1+)")
    boot_mem_end = above_start + above if above else below
    base = size = 0
    if spec.ram_size < spec.maxram:
        base, size = _device_region(spec, above_start + above)
        why += (f"; device memory starts at ROUND_UP({above_start >> 30}G + {above >> 20}M, 1G) "
                f"= {base:#x} and spans maxmem - mem + 1G x {spec.slots} slots (pc.c)")
    block = spec.block_size or default_block_size(boot_mem_end)
    return Layout(spec.machine, below, above, base, size, block, boot_mem_end, BACKEND_ALIGN,
                  why, above_start, _max_used_gpa(spec, above, above_start),
                  spec.cpu.phys_bits)
