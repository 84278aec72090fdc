"""The firmware a machine boots with, fetched into memhp's cache.

virt needs UEFI so that QEMU creates the ACPI GED (pc-dimm hotplug,
:mod:`harness.machines.arm64`).  memhp boots Debian 13's EDK2
(``qemu-efi-aarch64`` of trixie, 2025.02), not the host's, and fetches it
through its own apt (an ``all`` package: nothing is installed):

Debian 12's EDK2 (2022.11, what ``apt-get install qemu-efi-aarch64`` gives
on this host) lists the second flash bank, 0x4000000-0x7ffffff, as
cacheable memory in the UEFI memory map, outside every SRAT range.  The
kernel then finds a memblock on no node and gives up on NUMA: one fake node
0 for all memory, hot-added memory included (6.1: "NUMA: Warning: invalid
memblk node 16 [mem 0x04000000-0x07ffffff]"; 6.12: "NUMA: no nodes
coverage for 64MB of ... RAM").  With trixie's EDK2 the same guests see
both nodes and each CPU on its node (measured with -bios and with pflash,
QEMU 7.2 and 10.0, kernels 6.1.0-57 and 6.12.95 cloud-arm64).

API::

    firmware_path(machine)   # "" when the machine boots without firmware

The first cached version is used from then on (no apt call per run).
"""

from __future__ import annotations

from pathlib import Path

from harness import cache as store
from harness.errors import HostEnvironmentError

#: Where virt's UEFI comes from: (package, suite, file inside it)
EDK2 = ("qemu-efi-aarch64", "trixie", "usr/share/qemu-efi-aarch64/QEMU_EFI.fd")


def firmware_path(machine: object, cache: Path | None = None) -> str:
    """The ``-bios`` file for ``machine`` (a :class:`harness.machines.base.Machine`):
    "" for none, else trixie's EDK2 in the cache (fetched on first use)."""
    if not getattr(machine, "firmware", ""):
        return ""
    from harness.apt import TRIXIE, Apt

    package, suite, inside = EDK2
    base = (cache or store.cache_root()) / "firmware"
    cached = sorted(base.glob(f"{package}-*/{inside}"))
    if cached:  # no apt call once fetched (an apt update refreshes it: a new version)
        return str(cached[-1])
    from harness.image.debs import run_tool

    apt = Apt(cache, sources=TRIXIE)
    version = apt.version(package, suite)
    root = base / f"{package}-{version.replace(':', '_')}"
    fd = root / inside
    with store.lock(base, root.name):
        if not fd.is_file():
            deb = apt.download([package], suite)[package]
            with store.building(root, mode=0o755, prefix=".unpack-") as tmp:
                run_tool(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
                if not (tmp / inside).is_file():
                    raise HostEnvironmentError(f"{deb.name} has no {inside}")
    return str(fd)
