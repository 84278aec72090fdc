"""The guest kernel's hotplug policy: the inputs of the kernel rules.

Everything the kernel consults when it adds, onlines and offlines memory,
as plain values.  memhp reads them from the guest at baseline (see
:mod:`harness.guest.readers`, ``Guest.kernel_policy``); tests build them by
hand.  Nothing here does I/O.

Where each input lives in the guest (Linux 6.1 .. 7.2, checked in the
sources of 6.1.190, 6.12.95 and 7.2.13):

* ``auto_online_blocks`` -- ``/sys/devices/system/memory/auto_online_blocks``
  (drivers/base/memory.c ``auto_online_blocks_show``): the online type
  ``add_memory_resource()`` gives new blocks.  It is the *effective*
  value: the build default (``CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE`` before
  6.14, ``CONFIG_MHP_DEFAULT_ONLINE_TYPE_*`` since), overridden by
  ``memhp_default_state=`` and by writes to the file.
* ``online_policy``, ``auto_movable_ratio``, ``auto_movable_numa_aware``,
  ``memmap_on_memory`` -- ``/sys/module/memory_hotplug/parameters/``
  (mm/memory_hotplug.c ``module_param*``); absent files mean the feature is
  not built in (``memmap_on_memory`` needs ``CONFIG_MHP_MEMMAP_ON_MEMORY``).
* ``movable_node`` -- the kernel parameter (``cmdline_parse_movable_node``
  sets ``movable_node_enabled``), read from ``/proc/cmdline``.
* the zones of every node -- ``/proc/zoneinfo`` (mm/vmstat.c
  ``zoneinfo_show_print``: ``spanned``, ``present``, ``managed``, ``cma``
  and, for populated zones, ``start_pfn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

OnlineType = Literal["offline", "online", "online_kernel", "online_movable"]
ONLINE_TYPES: tuple[str, ...] = ("offline", "online", "online_kernel", "online_movable")
# include/linux/mmzone.h enum zone_type on x86_64 (ZONE_DEVICE never holds
# hot-added System RAM, so it is left out).
ZONE_ORDER: tuple[str, ...] = ("DMA", "DMA32", "Normal", "Movable")
KERNEL_ZONES: tuple[str, ...] = ("DMA", "DMA32", "Normal")
PAGE_SIZE = 4096
# sizeof(struct page) on x86_64 (include/linux/mm_types.h; 64 bytes on every
# Debian config, which is what CONFIG_HAVE_ALIGNED_STRUCT_PAGE keeps it to).
STRUCT_PAGE_SIZE = 64
# pageblock_nr_pages on x86_64: 1 << pageblock_order, pageblock_order =
# HUGETLB_PAGE_ORDER = 9 (include/linux/pageblock-flags.h).
PAGEBLOCK_PAGES = 512


def parse_kernel_version(release: str) -> tuple[int, int]:
    """``6.12.95+deb12-amd64`` -> (6, 12)."""
    m = re.match(r"^(\d+)\.(\d+)", release.strip())
    if m is None:
        raise ValueError(f"kernel release {release!r} does not start with MAJOR.MINOR")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class ZoneInfo:
    """One zone of one node at boot, from ``/proc/zoneinfo`` (pages)."""

    node: int
    name: str
    start_pfn: int
    spanned: int
    present: int
    managed: int
    cma: int = 0

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.spanned


@dataclass(frozen=True)
class KernelPolicy:
    """The inputs of the kernel's hotplug decisions, and where each came from."""

    release: str = "6.1.0"
    auto_online_blocks: OnlineType = "offline"
    online_policy: Literal["contig-zones", "auto-movable"] = "contig-zones"
    auto_movable_ratio: int = 301
    auto_movable_numa_aware: bool = True
    memmap_on_memory: Literal["N", "Y", "force"] = "N"
    movable_node: bool = False
    kernelcore: str | None = None
    movablecore: str | None = None
    memhp_default_state: str | None = None
    zones: tuple[ZoneInfo, ...] = ()
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.auto_online_blocks not in ONLINE_TYPES:
            raise ValueError(f"auto_online_blocks {self.auto_online_blocks!r} is not an "
                             f"online type ({', '.join(ONLINE_TYPES)})")
        if self.online_policy not in ("contig-zones", "auto-movable"):
            raise ValueError(f"online_policy {self.online_policy!r} is not contig-zones "
                             "or auto-movable")
        if self.memmap_on_memory not in ("N", "Y", "force"):
            raise ValueError(f"memmap_on_memory {self.memmap_on_memory!r} is not N, Y or force")
        if self.auto_movable_ratio < 0:
            raise ValueError(f"auto_movable_ratio {self.auto_movable_ratio} is negative")

    @property
    def version(self) -> tuple[int, int]:
        return parse_kernel_version(self.release)

    @property
    def auto_online(self) -> str | None:
        """The online type new blocks get by themselves, None if they stay offline."""
        return None if self.auto_online_blocks == "offline" else self.auto_online_blocks

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release, "auto_online_blocks": self.auto_online_blocks,
            "online_policy": self.online_policy, "auto_movable_ratio": self.auto_movable_ratio,
            "auto_movable_numa_aware": self.auto_movable_numa_aware,
            "memmap_on_memory": self.memmap_on_memory, "movable_node": self.movable_node,
            "kernelcore": self.kernelcore, "movablecore": self.movablecore,
            "memhp_default_state": self.memhp_default_state,
            "zones": [{"node": z.node, "zone": z.name, "start_pfn": z.start_pfn,
                       "spanned": z.spanned, "present": z.present, "managed": z.managed,
                       "cma": z.cma} for z in self.zones],
            "sources": dict(self.sources),
        }


def _bool(text: str) -> bool:
    # kstrtobool(): y/Y/1/on -> true; n/N/0/off -> false (lib/kstrtox.c).
    t = text.strip().lower()
    if t in ("y", "1", "on", "yes", "true"):
        return True
    if t in ("n", "0", "off", "no", "false"):
        return False
    raise ValueError(f"{text!r} is not a kernel boolean")


def cmdline_params(cmdline: str) -> dict[str, str | None]:
    """``/proc/cmdline`` as {param: value or None}; the last occurrence wins."""
    out: dict[str, str | None] = {}
    for word in cmdline.split():
        key, eq, value = word.partition("=")
        out[key] = value if eq else None
    return out


def policy_from_guest(release: str, auto_online_blocks: str, params: dict[str, str],
                      cmdline: str, zones: tuple[ZoneInfo, ...]) -> KernelPolicy:
    """Assemble a :class:`KernelPolicy` from what the guest reported.

    ``params`` maps ``/sys/module/memory_hotplug/parameters/<name>`` to its
    contents (missing names: the parameter does not exist in that kernel).
    """
    args = cmdline_params(cmdline)
    sources = {
        "auto_online_blocks": "/sys/devices/system/memory/auto_online_blocks",
        "online_policy": "/sys/module/memory_hotplug/parameters/online_policy",
        "memmap_on_memory": "/sys/module/memory_hotplug/parameters/memmap_on_memory",
        "movable_node": "/proc/cmdline",
        "zones": "/proc/zoneinfo",
    }
    mom = params.get("memmap_on_memory", "N").strip()
    mom = "force" if mom in ("force", "FORCE") else ("Y" if _bool(mom) else "N")
    if "memmap_on_memory" not in params:
        sources["memmap_on_memory"] = "absent (CONFIG_MHP_MEMMAP_ON_MEMORY unset): N"
    return KernelPolicy(
        release=release.strip(),
        auto_online_blocks=auto_online_blocks.strip(),  # type: ignore[arg-type]
        online_policy=params.get("online_policy", "contig-zones").strip(),  # type: ignore[arg-type]
        auto_movable_ratio=int(params.get("auto_movable_ratio", "301").strip()),
        auto_movable_numa_aware=_bool(params.get("auto_movable_numa_aware", "Y")),
        memmap_on_memory=mom,  # type: ignore[arg-type]
        movable_node="movable_node" in args,
        kernelcore=args.get("kernelcore"), movablecore=args.get("movablecore"),
        memhp_default_state=args.get("memhp_default_state"),
        zones=zones, sources=sources,
    )
