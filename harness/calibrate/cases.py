"""The kernel-policy cases, shared by ``memhp calibrate`` (the kernel
half, :mod:`.kernel`), the default guest's suite
(tests/scenarios/test_kernel_policy.py) and the kernel matrix
(tests/kernels/test_policy_matrix.py).

Each case: the machine (incl. kernel parameters), the steps, and a check
that the scenario exercised its rule (the model's expectation is not the
default policy's); the Runner compares every step with the model, so
``assert_passed`` is the verdict.  The cases name ``memhp_default_state``
where they need blocks to stay offline, because Debian's 6.12 onlines
new memory by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.scenario import Step, add, add_virtio_mem, offline, online, resize

OFFLINE = "memhp_default_state=offline"


def online_zones(result: Any) -> set[str | None]:
    return {b["zone"] for b in result.expected["blocks"] if b["state"] == "online"}


@dataclass(frozen=True)
class Case:
    id: str
    doc: str
    steps: tuple[Step, ...]
    check: Callable[[list[Any]], None]
    machine: dict[str, Any] = field(default_factory=dict)


def _zones_are(want: set[str]) -> Callable[[list[Any]], None]:
    def check(results: list[Any]) -> None:
        assert online_zones(results[-1]) == want, results[-1].expected["blocks"]
    return check


def _memmap_check(results: list[Any]) -> None:
    managed = {b["managed_bytes"] for b in results[-1].expected["blocks"]}
    assert min(managed) < results[-1].expected["block_size"]


def _spans_check(results: list[Any]) -> None:
    final = {b["number"]: b["zone"] for b in results[-1].expected["blocks"]}
    assert sorted(final.values()) == ["Movable", "Movable", "Normal", "Normal"], final


def _einval_check(results: list[Any]) -> None:
    assert online_zones(results[0]) == {"Normal"}
    assert results[-1].observed["blocks"]


CASES = (
    Case("movable_node", "default_zone_for_pfn(): a range in no zone goes Movable "
         "with movable_node", (add("dimm0:1G@1"), online("dimm0", "online")),
         _zones_are({"Movable"}), {"append": (OFFLINE, "movable_node")}),
    Case("auto_movable", "auto-movable within the 301 % ratio",
         (add("dimm0:1G@1"), online("dimm0", "online")), _zones_are({"Movable"}),
         {"append": (OFFLINE, "memory_hotplug.online_policy=auto-movable")}),
    Case("auto_movable_ratio", "1 GiB Movable exceeds 10 % of the boot kernel memory",
         (add("dimm0:1G@1"), online("dimm0", "online")), _zones_are({"Normal"}),
         {"append": (OFFLINE, "memory_hotplug.online_policy=auto-movable",
                     "memory_hotplug.auto_movable_ratio=10")}),
    Case("auto_movable_numa", "node 1 has 1G of kernel memory: 4G more Movable there "
         "breaks its own ratio though the system-wide one holds",
         (add("dimm0:4G@1"), online("dimm0", "online")), _zones_are({"Normal"}),
         {"numa": "5G,1G", "append": (OFFLINE, "memory_hotplug.online_policy=auto-movable")}),
    Case("memmap_on_memory", "the memmap lives in the hot-added memory: MemTotal grows "
         "by less (6.1: one-block DIMMs only; 6.6+: every block)",
         (add("small:128M@0"), online("small", "online_movable"), add("big:1G@1"),
          online("big", "online_movable")), _memmap_check,
         {"append": (OFFLINE, "memory_hotplug.memmap_on_memory=1")}),
    Case("einval_when_auto_onlined", "auto-onlined blocks answer EINVAL to another "
         "online write (state_store); predicted, so the step passes",
         (add("dimm0:512M@1"), online("dimm0", "online_movable"), offline("dimm0")),
         _einval_check, {"append": ("memhp_default_state=online_kernel",)}),
    Case("offline_may_be_busy", "offlining Normal memory may meet EBUSY; the model "
         "follows the kernel's answer", (add("dimm0:256M@0"), offline("dimm0")),
         lambda results: None, {"append": ("memhp_default_state=online_kernel",)}),
    Case("zone_spans", "one-block DIMMs side by side: online inherits the zone whose span "
         "covers a block; inside both spans the kernel zone wins",
         (add("a:128M@1"), add("b:128M@1"), add("c:128M@1"), add("d:128M@1"),
          online("a", "online_movable"), online("c", "online_movable"),
          online("b", "online"), offline("b"), online("d", "online"), online("b", "online")),
         _spans_check, {"append": (OFFLINE,)}),
)

# Run by memhp calibrate beside CASES (the suite has its own virtio-mem tests).
VIRTIO_MEM_CASES = (
    Case("virtio_mem_grow_shrink", "virtio-mem plugs into new blocks, then unplugs "
         "whole blocks before sub-blocks (Sub Block Mode); what stays busy in a kernel "
         "zone is the driver's to keep",
         (add_virtio_mem("vmem0:2G@1", "512M"), resize("vmem0", "1026M"),
          resize("vmem0", "256M")), lambda results: None, {"append": (OFFLINE,)}),
)

ALL_CASES = CASES + VIRTIO_MEM_CASES
