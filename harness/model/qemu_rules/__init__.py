"""QEMU's memory-hotplug rules, per QEMU version and machine-type version.

The model never branches on a version number inline: it asks
:func:`rules_for` for a :class:`QemuRules` and reads its fields.  Each field
that changed between versions is one entry of :data:`CHANGES` (QEMU
version) or :data:`MACHINE_CHANGES` (machine-type version, like QEMU's own
``pc_compat_X_Y`` arrays), with the source that made the change.

Every QEMU from 7.2 (:data:`OLDEST`) on gets the rules in force at its
version: a version between two changes (8.0, 8.1, 9.1, 10.2, 11.0 ...) has
those of the last change at or before it.  Sources read: the Debian source
packages of 7.2 (``qemu_7.2+dfsg``) and 10.0.2 (``qemu_10.0.2+ds``), for
8.x/9.x the commits that changed a rule in between (cited per entry), and
for 10.1-11.1 the 10.0.2 sources' own forward rules (the machine-type
deletion gate) plus the 11.1.3 binary of trixie-backports (its error
strings against 10.0.2's, ``-machine help``, and the model-vs-QEMU tests).

A QEMU newer than :data:`NEWEST_READ` is not refused: it gets the newest
rules, and :attr:`QemuRules.extrapolated_from` names the version they were
read for, so that callers can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import UsageError
from harness.model.changes import Change, clamp, in_force
from harness.model.qemu_rules.cpu import CpuSpec, default_cpu, parse_cpu_option

__all__ = [
    "CHANGES", "MACHINE_CHANGES", "NEWEST_READ", "Change", "OLDEST", "MachineType", "QemuRules",
    "CpuSpec", "default_cpu", "describe_versions", "oldest_machine_type",
    "parse_cpu_option", "parse_machine_type", "parse_qemu_version", "rules_for",
]

SizeCheck = Literal["after-addr", "none", "before-addr"]
Gpa32 = Literal["phys-bits", "long-mode"]

# The oldest QEMU modelled (Debian 12's) and the newest whose sources or
# binary were read (trixie-backports' 11.1.3).  Anything in between gets the
# rules in force; anything newer the newest rules, flagged as extrapolated.
OLDEST = (7, 2)
NEWEST_READ = (11, 1)
# Machine-type versions older than this are not modelled: older types
# differ in DIMM alignment (enforce_aligned_dimm, <= 2.1), the reserved-end
# of device memory (broken_reserved_end, <= 2.4) and gigabyte_align (<= 2.0),
# none of which memhp users need.  4.0 is the oldest pc and q35 type QEMU
# 10.0 still has that is not deprecated for removal in 7.2 alike.
OLDEST_MACHINE = (4, 0)


@dataclass(frozen=True)
class QemuRules:
    """The rules that apply to one QEMU binary and machine-type version."""

    qemu: tuple[int, int]
    machine_version: tuple[int, int]
    # Where memory_device_pre_plug()/memory_device_get_free_addr() check
    # that the backend size is a multiple of its alignment (2 MiB):
    # after the explicit address's alignment (7.2), not at all (8.2), or
    # before it (9.0+).
    size_check: SizeCheck = "after-addr"
    # pcmc->enforce_amd_1tb_hole: RAM above 4G moves to 1 TiB on AMD CPUs
    # when the highest used address reaches the HyperTransport hole.
    enforce_amd_1tb_hole: bool = True
    # file and memfd backends refuse, at object-add, a size that is no
    # multiple of their page size (backends/hostmem.c
    # host_memory_backend_memory_complete(), ``backend->aligned``).
    backend_size_check: bool = False
    # memory-backend-ram,share=on is a memfd (so not accounted against
    # overcommit up front) rather than shared anonymous memory (accounted).
    ram_share_memfd: bool = False
    # Versioned machine types are no longer registered once six years old
    # (include/hw/boards.h MACHINE_VER_DELETION, gated on QEMU >= 10.1):
    # see :func:`oldest_machine_type`.
    machine_deletion: bool = False
    # What pc_max_used_gpa() (hw/i386/pc.c) calls a 32-bit system: one with
    # phys-bits <= 32, whose max used address is then 2^phys-bits - 1, so
    # never refused (7.2), or one without long mode (8.2+), see
    # harness.model.layout._max_used_gpa.
    gpa_32bit: Gpa32 = "phys-bits"
    # pcmc->broken_32bit_mem_addr_check (machine types up to 8.1, read only
    # when gpa_32bit is "long-mode"): a 32-bit system's max used address is
    # 2^phys-bits - 1, not the end of device memory / RAM above 4G.
    broken_32bit_mem_addr_check: bool = True
    # The words of qemu_ram_alloc_from_fd() when the fd's file is smaller
    # than the size rounded up to host pages (a memfd of a size that is no
    # multiple of 4 KiB): "7.2" or "10.0" (see CHANGES).
    fd_size_words: Literal["7.2", "10.0"] = "7.2"
    sources: tuple[str, ...] = ()
    # The newest version read, whose rules these are, when ``qemu`` is newer
    # than anything read (:data:`NEWEST_READ`); None within what was read.
    extrapolated_from: tuple[int, int] | None = None

    @property
    def oldest_machine(self) -> tuple[int, int] | None:
        """The oldest versioned machine type this binary still has, when that
        is above the model's own floor (:data:`OLDEST_MACHINE`); else None."""
        if not self.machine_deletion:
            return None  # 7.2: pc 1.4/q35 2.4; 10.0: 2.4 -- all below 4.0
        return oldest_machine_type(self.qemu)


# Keyed by QEMU version.
CHANGES: tuple[Change, ...] = (
    Change("size_check", (7, 2), "after-addr",
           "hw/mem/memory-device.c memory_device_get_free_addr() (v7.2.0): "
           "check_addable, then 'address must be aligned', then 'backend memory size "
           "must be multiple'"),
    Change("size_check", (8, 2), "none",
           "commit eb1b7c4bd413 'memory-device: Drop size alignment check' "
           "(hv-balloon series, pulled Nov 2023, in v8.2.0)"),
    Change("size_check", (9, 0), "before-addr",
           "commit 540a1abbf0b2 'memory-device: reintroduce memory region size check' "
           "(Jan 2024, in v9.0.0): memory_device_pre_plug() checks the size before "
           "memory_device_get_free_addr() checks the address (v10.0.0 alike)"),
    Change("backend_size_check", (7, 2), False,
           "backends/hostmem.c host_memory_backend_memory_complete() (v7.2.0): no size "
           "check; a 3 MiB file on 2 MiB hugetlbfs maps 4 MiB and is refused only at "
           "device_add"),
    Change("backend_size_check", (9, 1), True,
           "commit 'backends/hostmem: Report error when memory size is unaligned' "
           "(M. Privoznik, 2024, v9.1.0): host_memory_backend_memory_complete() checks "
           "`backend->aligned` (set by hostmem-file.c and hostmem-memfd.c), read in "
           "v10.0.0: \"backend '%s' memory size must be multiple of %s\""),
    Change("ram_share_memfd", (7, 2), False,
           "util/oslib-posix.c qemu_anon_ram_alloc() (v7.2.0): share=on RAM is "
           "mmap(MAP_SHARED|MAP_ANONYMOUS), which Linux accounts like private memory "
           "(util/mmap-alloc.c map_noreserve_effective() comment)"),
    Change("ram_share_memfd", (10, 0), True,
           "system/physmem.c qemu_ram_alloc_internal() (v10.0.0, cpr-transfer series "
           "'physmem: fd-based shared memory'): RAM_SHARED RAM gets a memfd "
           "(qemu_ram_get_shared_fd), a shared fd mapping, not accounted"),
    Change("machine_deletion", (7, 2), False,
           "hw/i386/pc_piix.c, pc_q35.c (v7.2.0): pc-i440fx-1.4 and pc-q35-2.4 are the "
           "oldest; v10.0.2 alike with pc-i440fx-2.4 (both below the model's 4.0)"),
    Change("machine_deletion", (10, 1), True,
           "include/hw/boards.h MACHINE_VER_DELETION() (v10.0.2): a versioned machine "
           "type whose QEMU_VERSION_MAJOR - major > 6, or == 6 with QEMU_VERSION_MINOR >= "
           "minor, is not registered once 'QEMU_VERSION_MAJOR > 10 || (== 10 && MINOR >= "
           "1)'; used by include/hw/i386/pc.h DEFINE_PC_VER_MACHINE for every pc-i440fx "
           "and pc-q35 type.  Checked on QEMU 11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1): "
           "-machine help lists pc-i440fx-5.2 and pc-q35-5.2 as the oldest, and "
           "-machine pc-i440fx-5.0 exits 1 with 'unsupported machine type: "
           "\"pc-i440fx-5.0\"' (system/vl.c select_machine())"),
    Change("fd_size_words", (7, 2), "7.2",
           "softmmu/physmem.c qemu_ram_alloc_from_fd() (v7.2.0): size = HOST_PAGE_ALIGN("
           "size); a file smaller than that: \"backing store size 0x%x does not match 'size' "
           "option 0x%x\" (memfd_backend_memory_alloc() ftruncate()s the memfd to the "
           "unrounded size).  Checked on the 7.2.22 binary"),
    Change("fd_size_words", (10, 0), "10.0",
           "system/physmem.c qemu_ram_alloc_from_fd() (v10.0.2): \"%s backing store size "
           "0x%x is too small for 'size' option 0x%x plus 'offset' option 0x%x\", %s the "
           "region (the backend id).  Checked on the 10.0.2 and 11.1.3 binaries.  Changed "
           "between 7.2 and 10.0 ('offset' with 'hostmem-file: add offset option', the "
           "region name with the cpr-transfer series); 8.x-9.x binaries were not read and "
           "get 7.2's words"),
    Change("gpa_32bit", (7, 2), "phys-bits",
           "hw/i386/pc.c pc_max_used_gpa() (v7.2.0): 'if (cpu->phys_bits <= 32) return "
           "((hwaddr)1 << cpu->phys_bits) - 1', else the end of the 64-bit PCI hole, long "
           "mode or not.  Checked on the 7.2.22 binary: -cpu qemu64,phys-bits=32 starts with "
           "maxmem; -cpu qemu64,lm=off (36 bits) is refused against the hole's end"),
    Change("gpa_32bit", (8, 2), "long-mode",
           "commit 'hw/i386/pc: improve physical address space bound check for 32-bit x86 "
           "systems' (A. Sinha, 2023; in v8.2.0, as machine types up to 8.1 get "
           "broken_32bit_mem_addr_check): pc_max_used_gpa() (v10.0.2) takes the PCI hole's "
           "end when CPUID_EXT2_LM is set, whatever phys-bits; without long mode the end of "
           "device memory (or of RAM above 4G) - 1.  Checked on the 10.0.2 and 11.1.3 "
           "binaries: -cpu qemu64,phys-bits=32 with maxmem is refused, lm=off is refused "
           "against the device memory's end"),
)

# QEMU versioned machine types: three releases a year, X.0, X.1, X.2.
_MINORS_PER_MAJOR = 3
_DELETION_YEARS = 6  # include/hw/boards.h MACHINE_VER_DELETION_MAJOR


def oldest_machine_type(qemu: tuple[int, int]) -> tuple[int, int]:
    """The oldest machine type a release ``qemu`` registers under QEMU's
    deletion policy (MACHINE_VER_SHOULD_DELETE, for a release, micro < 50):
    (a, b) is gone when ``major - a > 6`` or ``major - a == 6 and minor >= b``."""
    major, minor = qemu
    if minor + 1 < _MINORS_PER_MAJOR:
        return major - _DELETION_YEARS, minor + 1
    return major - _DELETION_YEARS + 1, 0

# Keyed by machine-type version (pc-i440fx-X.Y / pc-q35-X.Y).
MACHINE_CHANGES: tuple[Change, ...] = (
    Change("enforce_amd_1tb_hole", (4, 0), False,
           "hw/i386/pc_piix.c pc_i440fx_machine_7_0_options() and hw/i386/pc_q35.c "
           "pc_q35_machine_7_0_options(): enforce_amd_1tb_hole = false (v7.2.0, v10.0.0)"),
    Change("enforce_amd_1tb_hole", (7, 1), True,
           "hw/i386/pc.c pc_machine_class_init(): enforce_amd_1tb_hole = true (v7.2.0, "
           "v10.0.0)"),
    Change("broken_32bit_mem_addr_check", (4, 0), True,
           "hw/i386/pc_piix.c pc_i440fx_machine_8_1_options(), hw/i386/pc_q35.c "
           "pc_q35_machine_8_1_options() (v10.0.2): broken_32bit_mem_addr_check = true"),
    Change("broken_32bit_mem_addr_check", (8, 2), False,
           "hw/i386/pc.c pc_machine_class_init() (v10.0.2): false (the default)"),
)


@dataclass(frozen=True)
class MachineType:
    """A machine of :data:`harness.machines.MACHINES` (``pc``, ``q35``,
    ``virt``) or a versioned one (``pc-i440fx-X.Y``, ``pc-q35-X.Y``, ``virt-X.Y``)."""

    family: str  # the name in harness.machines.MACHINES
    version: tuple[int, int] | None = None  # None: the binary's newest

    def qemu_name(self, qemu: tuple[int, int]) -> str:
        from harness.machines import machine

        return machine(self.family).type_name(self.version)


def _version(text: str, what: str, fix: str) -> tuple[int, int]:
    parts = text.split(".")
    if len(parts) < 2 or not all(p.isascii() and p.isdigit() for p in parts[:2]):
        raise UsageError(f"{what} {text!r} is not MAJOR.MINOR", value=text, fix=fix)
    return int(parts[0]), int(parts[1])


def parse_qemu_version(text: str) -> tuple[int, int]:
    """``10.0.2`` or ``7.2`` -> (10, 0)."""
    return _version(text.strip(), "QEMU version", "e.g. --qemu-version 10.0")


def parse_machine_type(text: str) -> MachineType:
    """``pc``, ``q35``, ``virt``, ``pc-i440fx-7.2``, ``pc-q35-10.0``, ``virt-7.2``
    (``-machine`` spelling; the machines of :data:`harness.machines.MACHINES`)."""
    from harness.machines import MACHINES, machine

    t = text.strip()
    fix = "use pc, q35, virt, pc-i440fx-X.Y, pc-q35-X.Y or virt-X.Y"
    if t in MACHINES:
        return MachineType(t)
    for name in MACHINES:
        prefix = machine(name).type_prefix + "-"
        if t.startswith(prefix):
            return MachineType(name, _version(t[len(prefix):], "machine-type version", fix))
    raise UsageError(f"machine type {text!r} is not modelled", value=text, fix=fix)


def describe_versions() -> str:
    """The QEMU versions the model answers for, in words."""
    return (f"every QEMU from {OLDEST[0]}.{OLDEST[1]} to {NEWEST_READ[0]}.{NEWEST_READ[1]} "
            f"(newer ones get {NEWEST_READ[0]}.{NEWEST_READ[1]}'s rules, flagged as "
            "extrapolated)")


def rules_for(qemu: tuple[int, int], machine_version: tuple[int, int] | None = None
              ) -> QemuRules:
    """The rules of QEMU ``qemu`` with machine type ``machine_version``
    (None: the binary's newest, which is ``qemu`` itself): those in force at
    ``qemu``, or for a QEMU newer than :data:`NEWEST_READ` the newest ones
    with ``extrapolated_from`` set; a UsageError for a QEMU older than
    :data:`OLDEST`."""
    qemu = (int(qemu[0]), int(qemu[1]))
    if qemu < OLDEST:
        raise UsageError(
            f"QEMU {qemu[0]}.{qemu[1]} is older than any the model knows ({describe_versions()})",
            value=qemu,
            fix=f"run QEMU {OLDEST[0]}.{OLDEST[1]} or newer (e.g. --qemu debian:10.0)")
    extrapolated = clamp(qemu, OLDEST, NEWEST_READ)[1]
    mver = qemu if machine_version is None else machine_version
    if mver > qemu:
        raise UsageError(
            f"machine-type version {mver[0]}.{mver[1]} is newer than QEMU {qemu[0]}.{qemu[1]}",
            value=mver, fix=f"use a machine type up to {qemu[0]}.{qemu[1]}")
    if mver < OLDEST_MACHINE:
        raise UsageError(
            f"machine-type version {mver[0]}.{mver[1]} is not modelled (oldest: "
            f"{OLDEST_MACHINE[0]}.{OLDEST_MACHINE[1]}); this is memhp's refusal, QEMU "
            f"{qemu[0]}.{qemu[1]} may well start it (older types align DIMMs and place "
            "device memory differently, which the model does not know)", value=mver,
            fix="use a machine type of 4.0 or newer")
    chosen = in_force(CHANGES, extrapolated or qemu) | in_force(MACHINE_CHANGES, mver)
    return QemuRules(
        qemu, mver,
        size_check=chosen["size_check"].value,  # type: ignore[arg-type]
        enforce_amd_1tb_hole=bool(chosen["enforce_amd_1tb_hole"].value),
        backend_size_check=bool(chosen["backend_size_check"].value),
        ram_share_memfd=bool(chosen["ram_share_memfd"].value),
        machine_deletion=bool(chosen["machine_deletion"].value),
        gpa_32bit=chosen["gpa_32bit"].value,  # type: ignore[arg-type]
        fd_size_words=chosen["fd_size_words"].value,  # type: ignore[arg-type]
        broken_32bit_mem_addr_check=bool(chosen["broken_32bit_mem_addr_check"].value),
        sources=tuple(c.source for c in chosen.values()),
        extrapolated_from=extrapolated)
