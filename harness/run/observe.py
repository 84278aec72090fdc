"""Observe the three views after a step and compare them with the model.

QEMU's ``query-memory-devices`` is read once and each device kind takes
its own records from it and compares the fields its model names
(``MODEL.compared``, :func:`harness.verify.compare_records`); the guest's
blocks, per-node and total memory are compared with the kernel model
(:mod:`harness.verify`).  While the VM is paused, or a device's unplug is
in flight, only QEMU's view is compared (:func:`observe_qemu_only`).
"""

from __future__ import annotations

from typing import Any

from harness.devices import KINDS, live_of, model_of
from harness.qemu.vm import VM
from harness.retry import wait_for
from harness.run.state import RunState
from harness.verify import Mismatch, compare_blocks, compare_records, compare_totals


def _qemu_devices(vm: VM) -> list[dict[str, Any]]:
    return list(vm.execute("query-memory-devices", phase="observe"))


def compare_devices(state: RunState, entries: list[dict[str, Any]], paused: bool
                    ) -> list[Mismatch]:
    """Every kind's devices: the model's against QEMU's, field by field."""
    out: list[Mismatch] = []
    for kind in KINDS:
        live = live_of(kind)
        out += compare_records(live.expected(state, paused),
                               live.observed(entries, state, paused), model_of(kind).compared)
    return out


def devices_json(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {live_of(kind).JSON_KEY: live_of(kind).observed_json(entries) for kind in KINDS}


def observe(vm: VM, state: RunState) -> tuple[dict[str, Any], list[Mismatch]]:
    """QEMU's and the guest's views after a step, and what differs from the model."""
    pending = [d for kind in KINDS for d in live_of(kind).pending(state)]
    if vm.paused or pending:
        return observe_qemu_only(vm, state, pending)
    guest = vm.guest
    entries = _qemu_devices(vm)
    view = guest.snapshot()
    numactl = guest.numactl()
    free = guest.free()
    expected = state.expected_blocks()
    mism = compare_devices(state, entries, paused=False)
    mism += compare_blocks(expected, state.boot_blocks, view.sysfs.blocks)
    node_totals = {n: info.values["MemTotal"] for n, info in view.nodes.items()}
    mism += compare_totals(
        block_size=view.sysfs.block_size, expected=expected,
        baseline_nodes=state.baseline_nodes, observed_nodes=node_totals,
        baseline_total=state.baseline_total, observed_total=view.meminfo["MemTotal"],
        observed_free_total=free.total,
        observed_numactl_mib={n.node: n.size_mib for n in numactl.nodes},
    )
    observed = devices_json(entries) | {
        "blocks": [
            {"number": b.number, "state": b.state, "node": b.node, "zone": b.zone,
             "valid_zones": list(b.valid_zones)}
            for b in view.sysfs.blocks if b.number not in state.boot_blocks
        ],
        "nodes": [{"node": n, "bytes": v} for n, v in sorted(node_totals.items())],
        "mem_total": view.meminfo["MemTotal"],
        "free_total": free.total,
        "numactl_mib": {str(n.node): n.size_mib for n in numactl.nodes},
    }
    return observed, mism


def observe_qemu_only(vm: VM, state: RunState, pending: list[str]
                      ) -> tuple[dict[str, Any], list[Mismatch]]:
    """While the VM is paused the guest cannot answer: only QEMU's view
    is observed and compared.  A device whose unplug is pending is still
    QEMU's until the guest ejects it (while paused: for sure; while the
    guest runs: maybe, so it is left out of the comparison)."""
    entries = _qemu_devices(vm)
    if vm.paused:
        why = "the VM is paused (QMP stop): the guest cannot be observed"
    else:
        why = "an unplug is in flight: the guest's view is a race until the next step"
    observed = devices_json(entries) | {
        "guest": f"not observed: {why}; only QEMU's view is compared",
        "run_state": vm.execute("query-status", phase="observe").get("status"),
        "pending_unplugs": sorted(pending),
    }
    return observed, compare_devices(state, entries, paused=vm.paused)


def expected_json(state: RunState) -> dict[str, Any]:
    """The model's half of a step's result."""
    return {live_of(kind).JSON_KEY: live_of(kind).expected_json(state) for kind in KINDS} | {
        "blocks": [
            {"number": b.number, "state": b.state, "node": b.node, "zone": b.zone,
             "managed_bytes": b.managed_bytes, "valid_zones": list(b.valid_zones)}
            for b in state.expected_blocks()
        ],
        "nodes": state.expected_nodes(),
        "block_size": state.block_size,
    }


def adopt_guest_blocks(vm: VM, state: RunState, group: str | None = None
                       ) -> tuple[list[str], list[Mismatch]]:
    """Tell the model what the guest shows for blocks changed outside a
    step's own writes (``--exec``; an ACPI eject the guest refused, which
    re-onlines what it had offlined): an offlined block, or an onlined one
    in a zone one of the online types gives it.  A block in a zone no
    online type would give is a mismatch."""
    km = state.km()
    sysfs = vm.guest.memory_sysfs()
    changes: list[str] = []
    mism: list[Mismatch] = []
    for b in km.block_view():
        seen = sysfs.block(b.number)
        if (group is not None and b.group != group) or seen is None \
                or (seen.state, seen.zone) == (b.state, b.zone):
            continue
        if seen.state == "offline":
            km.sync(b.number, "offline", None)
            changes.append(f"memory{b.number}: offlined (was {b.zone})")
            continue
        zones = {km.zone_for(t, b) for t in ("online", "online_kernel", "online_movable")}
        if seen.zone in zones:
            km.sync(b.number, "online", seen.zone)
            changes.append(f"memory{b.number}: onlined in {seen.zone}")
        else:
            mism.append(Mismatch("zone", f"memory{b.number}", "|".join(sorted(zones)),
                                 seen.zone, "guest"))
    return changes, mism


def block_states(vm: VM, numbers: list[int]) -> dict[int, str | None]:
    """The ``state`` of each block (None if absent), in one guest process."""
    paths = [f"/sys/devices/system/memory/memory{int(n)}/state" for n in numbers]
    res = vm.shell.run(["grep", "-sH", ".", *paths], timeout=vm.timeouts.s("command"),
                       check=False)
    out: dict[int, str | None] = dict.fromkeys(numbers)
    for line in res.stdout.splitlines():
        path, _, state = line.partition(":")
        num = int(path.split("/memory")[-1].split("/")[0])
        out[num] = state.strip()
    return out


def wait_blocks(vm: VM, numbers: list[int], *, present: bool = True,
                state: str | None = None, timeout: float | None = None) -> None:
    """Wait (bounded, one guest round trip per poll) until every block in
    ``numbers`` is present (in ``state`` if given), or all are gone
    (within ``timeout``, default the hot-add timeout)."""
    if not numbers:
        return

    def ready() -> bool | None:
        states = block_states(vm, numbers)
        if not present:
            return True if all(s is None for s in states.values()) else None
        if any(s is None for s in states.values()):
            return None
        if state is not None and any(s != state for s in states.values()):
            return None
        return True

    wait_for(ready, what=f"memory blocks {numbers[0]}..{numbers[-1]} to "
             f"{'appear' if present else 'go'}" + (f" {state}" if state else ""),
             timeout=timeout or vm.timeouts.s("hot_add"), first_interval=0.005,
             max_interval=0.1, abort=vm.check_alive, phase="hotplug",
             serial_tail=vm.serial_tail)
