"""Parsers of what the guest prints: pure, text in, frozen dataclasses out.

Tested on output captured from real guests (``tests/data/guest/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from harness.errors import VMError


def _bad(what: str, text: str) -> VMError:
    return VMError(f"cannot parse {what} from the guest: {text[:200]!r}", phase="observe")


# -- numactl -H -------------------------------------------------------------------

@dataclass(frozen=True)
class NumaNodeInfo:
    node: int
    cpus: tuple[int, ...]
    size_mib: int
    free_mib: int


@dataclass(frozen=True)
class NumaHardware:
    nodes: tuple[NumaNodeInfo, ...]
    distances: tuple[tuple[int, ...], ...]

    def node(self, n: int) -> NumaNodeInfo:
        for info in self.nodes:
            if info.node == n:
                return info
        raise KeyError(n)


def parse_numactl_hardware(text: str) -> NumaHardware:
    """``numactl -H``: per node CPUs, size and free (MB as numactl prints, i.e. MiB)."""
    cpus: dict[int, tuple[int, ...]] = {}
    size: dict[int, int] = {}
    free: dict[int, int] = {}
    distances: list[tuple[int, ...]] = []
    in_dist = False
    for line in text.splitlines():
        if m := re.match(r"node (\d+) cpus:(.*)$", line):
            cpus[int(m.group(1))] = tuple(int(c) for c in m.group(2).split())
        elif m := re.match(r"node (\d+) size: (\d+) MB", line):
            size[int(m.group(1))] = int(m.group(2))
        elif m := re.match(r"node (\d+) free: (\d+) MB", line):
            free[int(m.group(1))] = int(m.group(2))
        elif line.startswith("node distances:"):
            in_dist = True
        elif in_dist and (m := re.match(r"\s*(\d+):\s+([\d\s]+)$", line)):
            distances.append(tuple(int(x) for x in m.group(2).split()))
    if not size:
        raise _bad("numactl -H", text)
    nodes = tuple(NumaNodeInfo(n, cpus.get(n, ()), size[n], free.get(n, 0))
                  for n in sorted(size))
    return NumaHardware(nodes, tuple(distances))


# -- free -b ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FreeMemory:
    total: int
    used: int
    free: int
    shared: int
    buff_cache: int
    available: int
    swap_total: int
    swap_used: int
    swap_free: int


def parse_free_bytes(text: str) -> FreeMemory:
    """``free -b`` of procps or busybox (both print a Mem: and a Swap: row)."""
    header: list[str] = []
    mem: list[int] = []
    swap: list[int] = [0, 0, 0]
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "Mem:":
            mem = [int(w) for w in words[1:]]
        elif words[0] == "Swap:":
            swap = [int(w) for w in words[1:4]]
        elif not header and "total" in words:
            header = [w.lower() for w in words]
    if not mem or not header:
        raise _bad("free -b", text)
    row = dict(zip(header, mem, strict=False))
    buff = row.get("buff/cache", row.get("buffers", 0) + row.get("cache", 0))
    return FreeMemory(
        total=row["total"], used=row.get("used", 0), free=row.get("free", 0),
        shared=row.get("shared", 0), buff_cache=buff,
        available=row.get("available", row.get("free", 0)),
        swap_total=swap[0], swap_used=swap[1], swap_free=swap[2],
    )


# -- /proc/meminfo and nodeN/meminfo ------------------------------------------------------

def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``kB`` values times 1024; counts as is)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if m := re.match(r"(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?$", line.strip()):
            value = int(m.group(2))
            out[m.group(1)] = value * 1024 if line.rstrip().endswith("kB") else value
    if "MemTotal" not in out:
        raise _bad("/proc/meminfo", text)
    return out


@dataclass(frozen=True)
class NodeMeminfo:
    node: int
    values: Mapping[str, int]

    @property
    def mem_total(self) -> int:
        return self.values["MemTotal"]


def parse_node_meminfo(text: str) -> dict[int, NodeMeminfo]:
    """One or more ``/sys/devices/system/node/nodeN/meminfo`` files, concatenated."""
    nodes: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        if m := re.match(r"Node (\d+) (\w+(?:\(\w+\))?):\s+(\d+)(\s+kB)?$", line.strip()):
            value = int(m.group(3)) * (1024 if m.group(4) else 1)
            nodes.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return {n: NodeMeminfo(n, v) for n, v in nodes.items()}


# -- /sys/devices/system/memory ------------------------------------------------------------

# One cheap guest command (two processes) dumping every memory block; the
# parser below reads its output.
MEMORY_SYSFS_SCRIPT = r"""
cd /sys/devices/system/memory || exit 1
read bs < block_size_bytes; echo "block_size_bytes:$bs"
read ao < auto_online_blocks 2>/dev/null && echo "auto_online_blocks:$ao"
grep -sH . memory*/state memory*/valid_zones memory*/removable memory*/phys_index
ls -d memory*/node*
"""


@dataclass(frozen=True)
class MemoryBlock:
    number: int
    state: str
    node: int | None
    valid_zones: tuple[str, ...]
    removable: bool | None
    phys_index: int

    @property
    def zone(self) -> str | None:
        """The zone of an online block (``valid_zones`` then names only it,
        see drivers/base/memory.c valid_zones_show); None when offline."""
        if self.state != "online" or not self.valid_zones:
            return None
        return self.valid_zones[0]


@dataclass(frozen=True)
class MemorySysfs:
    block_size: int
    auto_online: str
    blocks: tuple[MemoryBlock, ...]

    def block(self, number: int) -> MemoryBlock | None:
        for b in self.blocks:
            if b.number == number:
                return b
        return None


def parse_memory_sysfs(text: str) -> MemorySysfs:
    block_size = 0
    auto = ""
    fields: dict[int, dict[str, str]] = {}
    nodes: dict[int, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("block_size_bytes:"):
            try:
                block_size = int(line.split(":", 1)[1], 16)
            except ValueError:
                raise _bad("memory block sysfs (block_size_bytes)", text) from None
        elif line.startswith("auto_online_blocks:"):
            auto = line.split(":", 1)[1]
        elif m := re.match(r"memory(\d+)/(\w+):(.*)$", line):
            fields.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3).strip()
        elif m := re.match(r"memory(\d+)/node(\d+)$", line):
            nodes[int(m.group(1))] = int(m.group(2))
    if not block_size:
        raise _bad("memory block sysfs", text)
    blocks = []
    for n in sorted(fields):
        f = fields[n]
        removable = f.get("removable")
        blocks.append(MemoryBlock(
            number=n, state=f.get("state", "?"), node=nodes.get(n),
            valid_zones=tuple(f.get("valid_zones", "").split()),
            removable=None if removable is None else removable == "1",
            phys_index=int(f.get("phys_index", "0"), 16),
        ))
    return MemorySysfs(block_size, auto, tuple(blocks))


@dataclass(frozen=True)
class BootProfile:
    """What ``initcall_debug`` and the printk timestamps say about a boot."""

    initcalls: tuple[tuple[str, float], ...]  # (function, seconds), slowest first
    run_init_s: float | None  # kernel timestamp of "Run /init as init process"
    ready_s: float | None  # kernel timestamp of the guest's ready marker (in /dev/kmsg)
    marks: tuple[tuple[str, float], ...] = ()  # the default /init's phase marks

    @property
    def initcalls_total_s(self) -> float:
        return sum(s for _, s in self.initcalls)


_INITCALL_RE = re.compile(r"initcall (\S+?)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[\S+\])? "
                          r"returned -?\d+ after (\d+) usecs")
_STAMP_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")


def parse_boot_profile(dmesg: str, ready_marker: str = "MEMHP-READY") -> BootProfile:
    """Initcall durations and boot milestones from a timestamped dmesg."""
    calls = [(m.group(1), int(m.group(2)) / 1e6) for m in _INITCALL_RE.finditer(dmesg)]
    if not calls:
        raise _bad("dmesg (no initcall_debug lines: boot with initcall_debug)", dmesg)

    run_init: float | None = None
    ready: float | None = None
    marks = []
    for line in dmesg.splitlines():  # one pass: the first of each milestone counts
        m = _STAMP_RE.match(line)
        if m is None:
            continue
        t = float(m.group(1))
        if run_init is None and "Run /init as init process" in line:
            run_init = t
        elif ready is None and ready_marker in line:
            ready = t
        elif "memhp-init: " in line:
            marks.append((line.split("memhp-init: ", 1)[1].strip(), t))
    return BootProfile(tuple(sorted(calls, key=lambda c: -c[1])), run_init, ready,
                       tuple(marks))


# -- the kernel's hotplug policy inputs ------------------------------------------------

# One round trip: release, auto-online type, memory_hotplug parameters,
# command line, and the zone lines of /proc/zoneinfo.
KERNEL_POLICY_SCRIPT = r"""
echo "@@release"; uname -r
echo "@@auto"; cat /sys/devices/system/memory/auto_online_blocks
echo "@@params"
if cd /sys/module/memory_hotplug/parameters 2>/dev/null; then grep -sH . ./*; fi
echo "@@cmdline"; cat /proc/cmdline
echo "@@zoneinfo"
grep -E '^Node|^ +(spanned|present|managed|cma) |start_pfn:' /proc/zoneinfo
echo "@@end"
"""


@dataclass(frozen=True)
class PolicyDump:
    """What :data:`KERNEL_POLICY_SCRIPT` printed, split into its parts."""

    release: str
    auto_online_blocks: str
    params: dict[str, str]
    cmdline: str
    zones: tuple[tuple[int, str, dict[str, int]], ...]  # (node, zone, fields)


def parse_zoneinfo(text: str) -> tuple[tuple[int, str, dict[str, int]], ...]:
    """``/proc/zoneinfo`` (or its zone lines): per zone spanned, present,
    managed, cma and start_pfn (mm/vmstat.c zoneinfo_show_print; an
    unpopulated zone prints no start_pfn)."""
    zones: list[tuple[int, str, dict[str, int]]] = []
    current: dict[str, int] | None = None
    for line in text.splitlines():
        if m := re.match(r"Node (\d+), zone\s+(\w+)", line):
            current = {}
            zones.append((int(m.group(1)), m.group(2), current))
        elif current is not None and (m := re.match(
                r"\s+(spanned|present|managed|cma)\s+(\d+)$", line)):
            current[m.group(1)] = int(m.group(2))
        elif current is not None and (m := re.match(r"\s+start_pfn:\s+(\d+)$", line)):
            current["start_pfn"] = int(m.group(1))
    return tuple(zones)


def parse_policy_dump(text: str) -> PolicyDump:
    parts = re.split(r"^@@(\w+)$", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2], strict=False))
    if "end" not in sections or not sections.get("release", "").strip():
        raise _bad("the kernel's hotplug policy", text)
    params: dict[str, str] = {}
    for line in sections.get("params", "").splitlines():
        if m := re.match(r"(?:\./)?(\w+):(.*)$", line.strip()):
            params[m.group(1)] = m.group(2).strip()
    zones = parse_zoneinfo(sections.get("zoneinfo", ""))
    if not zones or not any(f.get("present") for _, _, f in zones):
        raise _bad("/proc/zoneinfo (no populated zone)", sections.get("zoneinfo", ""))
    auto = sections.get("auto", "").strip()
    if not auto:
        raise _bad("auto_online_blocks", text)
    return PolicyDump(release=sections["release"].strip(), auto_online_blocks=auto,
                      params=params, cmdline=sections.get("cmdline", "").strip(), zones=zones)
