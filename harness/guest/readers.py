"""Typed access to the guest's memory state over one SSH connection.

Every reader is one round trip (one small script) so that observing a step
costs a few tens of milliseconds even under TCG.  Block numbers and policies
are validated before they reach the guest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from harness.errors import UsageError, VMError
from harness.guest.parsers import (
    KERNEL_POLICY_SCRIPT,
    MEMORY_SYSFS_SCRIPT,
    FreeMemory,
    MemorySysfs,
    NodeMeminfo,
    NumaHardware,
    parse_free_bytes,
    parse_meminfo,
    parse_memory_sysfs,
    parse_node_meminfo,
    parse_numactl_hardware,
    parse_policy_dump,
)
from harness.guest.splats import LogRecord, parse_raw_log
from harness.guest.ssh import GuestShell
from harness.model.kernel import KernelPolicy, ZoneInfo, policy_from_guest

OnlinePolicy = Literal["online", "online_kernel", "online_movable"]
_POLICIES = ("online", "online_kernel", "online_movable", "offline")

_SNAPSHOT_SCRIPT = (
    "echo @@sysfs\n" + MEMORY_SYSFS_SCRIPT
    + "\necho @@nodes\ncat /sys/devices/system/node/node*/meminfo\n"
    + "echo @@meminfo\ncat /proc/meminfo\n"
)

# Writes each block's state; reports "<n> ok" or "<n> fail <error>" per block.
_SET_STATE_SCRIPT = r"""
want=$1; shift
for n in "$@"; do
  f=/sys/devices/system/memory/memory$n/state
  if err=$( { echo "$want" > "$f"; } 2>&1 ); then echo "$n ok"; else echo "$n fail $err"; fi
done
"""


@dataclass(frozen=True)
class GuestMemoryView:
    """The guest's memory as seen in one round trip."""

    sysfs: MemorySysfs
    nodes: dict[int, NodeMeminfo]
    meminfo: dict[str, int]


@dataclass(frozen=True)
class BlockChange:
    number: int
    ok: bool
    error: str = ""

    @property
    def errno_name(self) -> str | None:
        for name, text in (("EBUSY", "busy"), ("EINVAL", "invalid"), ("EPERM", "not permitted"),
                           ("ENOMEM", "memory")):
            if text in self.error.lower():
                return name
        return None


def _block_numbers(numbers: Sequence[int]) -> list[str]:
    out = []
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"memory block number {n!r} is not a non-negative integer", value=n)
        out.append(str(n))
    return out


class Guest:
    """Readers and memory-block operations on one guest."""

    def __init__(self, shell: GuestShell) -> None:
        self.shell = shell

    def snapshot(self) -> GuestMemoryView:
        text = self.shell.run_script(_SNAPSHOT_SCRIPT).stdout
        parts = re.split(r"^@@(\w+)$", text, flags=re.M)
        sections = dict(zip(parts[1::2], parts[2::2], strict=False))
        try:
            return GuestMemoryView(
                sysfs=parse_memory_sysfs(sections["sysfs"]),
                nodes=parse_node_meminfo(sections["nodes"]),
                meminfo=parse_meminfo(sections["meminfo"]),
            )
        except KeyError as exc:
            raise VMError(f"guest snapshot lacks section {exc}", phase="observe") from exc

    def kernel_policy(self) -> KernelPolicy:
        """The inputs of the kernel's hotplug decisions, in one round trip
        (see :mod:`harness.model.kernel.inputs` for where each comes from)."""
        dump = parse_policy_dump(self.shell.run_script(KERNEL_POLICY_SCRIPT).stdout)
        zones = tuple(
            ZoneInfo(node=n, name=name, start_pfn=f.get("start_pfn", 0),
                     spanned=f.get("spanned", 0), present=f.get("present", 0),
                     managed=f.get("managed", 0), cma=f.get("cma", 0))
            for n, name, f in dump.zones)
        try:
            return policy_from_guest(dump.release, dump.auto_online_blocks, dump.params,
                                     dump.cmdline, zones)
        except ValueError as exc:
            raise VMError(f"the guest's hotplug policy is not understood: {exc}",
                          phase="observe") from exc

    def memory_sysfs(self) -> MemorySysfs:
        return parse_memory_sysfs(self.shell.run_script(MEMORY_SYSFS_SCRIPT).stdout)

    def block_size(self) -> int:
        return int(self.shell.read_file("/sys/devices/system/memory/block_size_bytes"), 16)

    def all_node_meminfo(self) -> dict[int, NodeMeminfo]:
        return parse_node_meminfo(self.shell.run_script(
            "cat /sys/devices/system/node/node*/meminfo").stdout)

    def node_meminfo(self, node: int) -> NodeMeminfo:
        return self.all_node_meminfo()[int(node)]

    def meminfo(self) -> dict[str, int]:
        return parse_meminfo(self.shell.read_file("/proc/meminfo"))

    def free(self) -> FreeMemory:
        return parse_free_bytes(self.shell.run(["free", "-b"]).stdout)

    def numactl(self) -> NumaHardware:
        return parse_numactl_hardware(self.shell.run(["numactl", "-H"]).stdout)

    def dmesg(self) -> str:
        return self.shell.run(["dmesg"]).stdout

    def kernel_log(self) -> list[LogRecord]:
        """The kernel's log with each record's facility and level (``dmesg -r``)."""
        return parse_raw_log(self.shell.run(["dmesg", "-r"]).stdout)

    def uname_r(self) -> str:
        return self.shell.run(["uname", "-r"]).stdout.strip()

    def kernel_config(self) -> str | None:
        res = self.shell.run_script(
            'if [ -r /proc/config.gz ]; then zcat /proc/config.gz; '
            'else cat "/boot/config-$(uname -r)"; fi', check=False)
        return res.stdout if res.status == 0 and res.stdout else None

    def set_blocks(self, numbers: Sequence[int], state: str) -> list[BlockChange]:
        """Write ``state`` to each block in one round trip; per-block results."""
        if state not in _POLICIES:
            raise UsageError(f"block state {state!r} unknown",
                             fix=f"use one of {', '.join(_POLICIES)}")
        args = _block_numbers(numbers)
        if not args:
            return []
        out = self.shell.run_script(_SET_STATE_SCRIPT, args=[state, *args]).stdout
        changes = []
        for line in out.splitlines():
            num, _, rest = line.partition(" ")
            ok = rest == "ok"
            changes.append(BlockChange(int(num), ok, "" if ok else rest.removeprefix("fail ")))
        return changes

    def online_blocks(self, numbers: Sequence[int], policy: OnlinePolicy,
                      raise_on_failure: bool = False) -> list[BlockChange]:
        changes = self.set_blocks(numbers, policy)
        return self._maybe_raise(changes, policy, raise_on_failure)

    def offline_blocks(self, numbers: Sequence[int],
                       raise_on_failure: bool = False) -> list[BlockChange]:
        return self._maybe_raise(self.set_blocks(numbers, "offline"), "offline",
                                 raise_on_failure)

    @staticmethod
    def _maybe_raise(changes: list[BlockChange], what: str, raise_on_failure: bool
                     ) -> list[BlockChange]:
        bad = [c for c in changes if not c.ok]
        if bad and raise_on_failure:
            detail = "; ".join(f"memory{c.number}: {c.error}" for c in bad)
            raise VMError(f"{what} failed for {len(bad)} block(s): {detail}", phase="guest")
        return changes

    def set_auto_online(self, policy: str) -> None:
        if policy not in _POLICIES:
            raise UsageError(f"auto-online policy {policy!r} unknown")
        self.shell.run(["sh", "-c", 'echo "$1" > /sys/devices/system/memory/auto_online_blocks',
                        "sh", policy])
