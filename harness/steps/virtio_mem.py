"""The virtio-mem device's steps: add (``device = "virtio-mem"``), resize,
remove, and what a reset does to it.

Each acts over QMP, tells the guest driver's model
(:class:`harness.devices.virtio_mem.driver.VirtioMemDriver`, kept in the
kernel model) the new request, and waits -- bounded, event-driven -- until
QEMU reports the plugged size the model predicts (``MEMORY_DEVICE_SIZE_CHANGE``,
or the size already there when the guest plugs nothing) and the guest shows
the predicted ``memoryN`` blocks.  A wait that ends without them is no error
here: the Runner's comparison then names what differs.  Each act then
compares the driver's own view, ``/proc/iomem`` (:mod:`harness.guest.iomem`),
and returns what differs.

Unplugging from a kernel zone is not determined by the inputs (busy
sub-blocks stay plugged and the driver retries on a 50 s+ timer,
:mod:`harness.devices.virtio_mem.driver`): when the wait for the exact outcome
ends without it, the plugged size and blocks the guest reached are offered
to the model (:meth:`VirtioMemDriver.accept`), which takes them if busy
kernel-zone memory explains them; otherwise the wait's error stands.  While
busy memory stays plugged, QEMU refuses ``device_del`` ("some of its memory
is still plugged"), and that refusal is then the expected outcome of a
remove step: the device stays, in the model too.  A device whose driver is
not modelled (Big Block Mode, auto-movable) fails each of its steps with
the reason, never with a KeyError.

Latencies (``StepResult.latencies``): ``device_add_s``/``qom_set_s``: the
QMP command; ``size_reached_s``: from the command until QEMU's size is the
predicted one; ``blocks_visible_s``: from the command until the guest's
sysfs shows the predicted blocks (present in their state, or gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.devices.virtio_mem.driver import UnmodelledDriver, VirtioMemDriver, rules_for
from harness.errors import QMPCommandError, UsageError, VMError, WaitTimeout
from harness.guest.iomem import merged_ranges, parse_iomem
from harness.model.kernel.rules import extrapolation_note
from harness.steps.refusal import act_refused
from harness.verify import Mismatch

log = logging.getLogger("harness.steps.virtio_mem")

if TYPE_CHECKING:
    from harness.devices.virtio_mem.rules import PlacedVirtioMem
    from harness.scenario import Step
    from harness.session import Runner


def is_virtio_mem(runner: Runner, step: Step) -> bool:
    """Whether the step's device is a virtio-mem (by its add step)."""
    if step.vmem is not None:
        return True
    return any(v.id == step.dimm for v in runner.current_vmems()) or any(
        s.vmem is not None and s.dimm == step.dimm for s in runner.scenario.steps)


def placed(runner: Runner, vmem_id: str) -> PlacedVirtioMem:
    for v in runner.current_vmems():
        if v.id == vmem_id:
            return v
    raise UsageError(f"virtio-mem {vmem_id!r} is not plugged at this step", value=vmem_id)


def driver_view(runner: Runner, driver: VirtioMemDriver) -> list[Mismatch]:
    """The driver's own view (``/proc/iomem``): its region where QEMU put
    the device, and the memory it added exactly the model's blocks."""
    text = runner.vm.ssh(["cat", "/proc/iomem"]).stdout
    region = parse_iomem(text).get(driver.addr)
    if region is None:
        return [Mismatch("iomem region", driver.id, f"{driver.addr:#x}", None, "guest")]
    out = []
    if region.end - region.start != driver.region_size:
        out.append(Mismatch("iomem region size", driver.id, driver.region_size,
                            region.end - region.start, "guest"))
    want = merged_ranges(driver.blocks(), driver.memory_block_size)
    if region.added != want:
        out.append(Mismatch("iomem System RAM (virtio_mem)", driver.id,
                            [f"{a:#x}-{b - 1:#x}" for a, b in want],
                            [f"{a:#x}-{b - 1:#x}" for a, b in region.added], "guest"))
    return out


def _settle(runner: Runner, driver: VirtioMemDriver, requested: int, since: int, t0: float,
            lat: dict[str, float]) -> list[Mismatch]:
    """Tell the driver model the request; wait for the blocks and QEMU's
    size; then compare the driver's own view."""
    from harness.session import wait_blocks

    km = runner.km()
    before = set(driver.blocks())
    target = driver.resize(km, requested)
    if driver.uncertain:
        log.warning("%s: unplugging from a kernel zone; the model predicts every attempt "
                    "succeeding, and accepts busy sub-blocks left plugged (alloc_contig_range() "
                    "may meet an unmovable page, EBUSY, and the driver then retries: not "
                    "determined by the inputs)", driver.id)
    after = list(driver.blocks())
    gone = sorted(before - set(after))
    online = all(km.blocks[n].state == "online" for n in after)
    try:
        wait_blocks(runner.vm, after, present=True, state="online" if online else None)
        # Unplugging online memory migrates its pages first: as slow as an eject.
        wait_blocks(runner.vm, gone, present=False, timeout=runner.vm.timeouts.s("unplug"))
        lat["blocks_visible_s"] = time.monotonic() - t0
        # QEMU rate-limits MEMORY_DEVICE_SIZE_CHANGE to one per second per device
        # (monitor/monitor.c monitor_qapi_event_conf): it can trail the blocks by 1 s.
        runner.vm.wait_virtio_mem_size(driver.id, target, since=since,
                                       timeout=runner.vm.timeouts.s("unplug"))
        lat["size_reached_s"] = time.monotonic() - t0
    except WaitTimeout:
        if not driver.uncertain:
            raise
        why = _accept_observed(runner, driver, before | set(after))
        if why is not None:
            log.warning("%s: the outcome the guest reached is not one busy kernel-zone memory "
                        "explains: %s", driver.id, why)
            raise
        lat["blocks_visible_s"] = lat["size_reached_s"] = time.monotonic() - t0
    return driver_view(runner, driver)


def _accept_observed(runner: Runner, driver: VirtioMemDriver, blocks: set[int]) -> str | None:
    """Offer QEMU's plugged size and the guest's blocks (of ``blocks``) to the
    driver model (:meth:`VirtioMemDriver.accept`); None when taken."""
    from harness.session import block_states

    size = next((v.size for v in runner.vm.query_virtio_mem() if v.id == driver.id), None)
    if size is None:
        return f"QEMU reports no virtio-mem {driver.id}"
    numbers = sorted(blocks | set(driver.blocks()))
    present = {n for n, st in block_states(runner.vm, numbers).items() if st is not None}
    if size == driver.plugged_size and present == set(driver.blocks()):
        return None
    why = driver.accept(runner.km(), size, present)
    if why is None:
        log.warning("%s: the guest kept %d MiB busy in kernel-zone blocks %s (plugged %d MiB; "
                    "the driver retries later): a legitimate outcome, the model follows it",
                    driver.id, driver.busy_bytes >> 20, list(driver.blocks()),
                    driver.plugged_size >> 20)
    return why


def _catch_up(runner: Runner, driver: VirtioMemDriver) -> None:
    """Busy memory left plugged may have been freed since (the driver's retry
    timer): follow it before the next act, when busy memory explains it."""
    if driver.busy_bytes:
        why = _accept_observed(runner, driver, set(driver.blocks()))
        if why is not None:
            log.warning("%s: since the last step the guest moved to an outcome the model "
                        "cannot explain (%s); the comparison will show it", driver.id, why)


def _driver(runner: Runner, v: PlacedVirtioMem) -> VirtioMemDriver:
    try:
        version = runner.km().policy.version
        note = extrapolation_note("the virtio-mem driver", version,
                                  rules_for(version).extrapolated_from)
        if note is not None:
            log.warning("%s: %s", v.id, note)
        if runner.km().policy.online_policy == "auto-movable":
            # virtio-mem memory forms *dynamic* memory groups, which
            # auto_movable_zone_for_pfn() treats unlike the DIMMs' static ones.
            raise UnmodelledDriver(
                f"virtio-mem {v.id}: the auto-movable online policy with virtio-mem's "
                "dynamic memory groups is not modelled")
        return VirtioMemDriver(v.id, v.addr, v.size, v.block_size, v.node, runner.block_size)
    except UnmodelledDriver as exc:
        raise VMError(str(exc), phase="model") from exc


def known_driver(runner: Runner, vmem_id: str) -> VirtioMemDriver:
    """The model of ``vmem_id``'s guest driver; a device added with a driver
    configuration that is not modelled fails with the reason (VMError), each
    step again, rather than with a KeyError."""
    km = runner.km()
    driver = km.virtio_mem.get(vmem_id)
    if driver is None:
        driver = _driver(runner, placed(runner, vmem_id))  # raises the reason
        km.virtio_mem[vmem_id] = driver
    return driver


# The driver's name in drivers/virtio/virtio_mem.c (virtio_mem_driver.driver.name
# = KBUILD_MODNAME), present once the module is loaded or built in.
DRIVER_DIR = "/sys/bus/virtio/drivers/virtio_mem"


def check_guest_driver(runner: Runner) -> None:
    """A guest kernel without the driver plugs nothing: say so before the
    device is added, rather than time out waiting for its blocks."""
    res = runner.vm.shell.run(["test", "-d", DRIVER_DIR], check=False,
                              timeout=runner.vm.timeouts.s("command"))
    if res.status != 0:
        raise VMError(
            f"the guest kernel has no virtio-mem driver ({DRIVER_DIR} is missing): "
            "build it with CONFIG_VIRTIO_MEM=y or =m (memhp's guest image loads the "
            "virtio_mem module when the kernel has one)", phase="hotplug")


def _command(runner: Runner, step: Step, lat: dict[str, float],
             action: Callable[[], object], lat_key: str) -> tuple[int, float]:
    """Run the step's QMP command (``lat[lat_key]`` is how long it took) and
    record the step; return the QMP cursor from before it (the size event
    comes after) and its start time."""
    qmp = runner.vm.qmp
    assert qmp is not None
    since = qmp.cursor()
    t0 = time.monotonic()
    action()
    lat[lat_key] = time.monotonic() - t0
    runner.steps_done.append(step)
    return since, t0


def act_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.vmem is not None
    op = step.vmem
    props = {"block_size": op.block_size, "memaddr": op.addr,
             "unplugged_inaccessible": op.unplugged_inaccessible,
             "dynamic_memslots": op.dynamic_memslots}

    def plug() -> None:
        runner.vm.hot_add_virtio_mem(op.id, op.size, op.node, op.requested, **props)

    if step.expect_refusal is not None:
        return act_refused(runner, step, lat, plug, "qmp_s")
    check_guest_driver(runner)
    since, t0 = _command(runner, step, lat, plug, "device_add_s")
    driver = _driver(runner, placed(runner, op.id))
    runner.km().virtio_mem[op.id] = driver
    return _settle(runner, driver, op.requested, since, t0, lat)


def act_resize(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.requested is not None
    requested = step.requested

    def qom_set() -> None:
        runner.vm.resize_virtio_mem(step.dimm, requested)

    if step.expect_refusal is not None:
        return act_refused(runner, step, lat, qom_set, "qmp_s")
    driver = known_driver(runner, step.dimm)
    if not runner.vm.paused:
        _catch_up(runner, driver)
    since, t0 = _command(runner, step, lat, qom_set, "qom_set_s")
    if runner.vm.paused:
        # QEMU takes the request at once (virtio_mem_set_requested_size():
        # requested-size and the usable region change, virtio_notify_config()
        # raises the config interrupt), but no vCPU runs to take it: the
        # plugged size stays until the guest's driver acts after cont.  The
        # Runner observes QEMU only meanwhile; the last request wins.
        runner.pending_resizes[step.dimm] = requested
        return []
    return _settle(runner, driver, requested, since, t0, lat)


def after_resume(runner: Runner, since: int, t0: float, lat: dict[str, float]
                 ) -> list[Mismatch]:
    """The guest runs again: its driver reads the config changed while
    paused (drivers/virtio/virtio_mem.c virtio_mem_config_changed() queues
    the work that reads ``requested_size``) and plugs or unplugs as for any
    resize; ``since`` is the QMP cursor taken before ``cont``."""
    pending, runner.pending_resizes = runner.pending_resizes, {}
    out: list[Mismatch] = []
    for vmem_id, requested in pending.items():
        out += _settle(runner, known_driver(runner, vmem_id), requested, since, t0, lat)
        lat[f"{vmem_id}_after_cont_s"] = lat.pop("blocks_visible_s")
        lat[f"{vmem_id}_size_after_cont_s"] = lat.pop("size_reached_s")
    return out


def act_remove(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    if step.expect_refusal is not None:
        return act_refused(runner, step, lat,
                           lambda: runner.vm.execute("device_del", {"id": step.dimm},
                                                     phase="hotplug"), "qmp_s")
    km = runner.km()
    driver = km.virtio_mem.get(step.dimm)
    if driver is not None and not runner.vm.paused:
        _catch_up(runner, driver)
    t0 = time.monotonic()
    try:
        runner.vm.hot_remove(step.dimm)
    except QMPCommandError as exc:
        if driver is None or not driver.busy_bytes or not driver.plugged_size \
                or "still plugged" not in str(exc):
            raise
        # virtio_mem_unplug_request_check(): QEMU refuses while any memory is
        # plugged, and the guest keeps busy kernel-zone memory plugged.
        lat["qmp_s"] = time.monotonic() - t0
        log.warning("%s: QEMU refused device_del (%s): the guest still keeps %d MiB busy; "
                    "the expected outcome while it does: the device stays", step.dimm,
                    exc, driver.plugged_size >> 20)
        return []
    lat["unplug_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    if driver is not None:
        km.virtio_mem.pop(step.dimm).remove_all(km)
    return []


def after_reset(runner: Runner, lat: dict[str, float]) -> list[Mismatch]:
    """``system_reset`` unplugs all of a virtio-mem's memory (QEMU's
    ``virtio_mem_system_reset()`` -> ``virtio_mem_unplug_all()``); the
    rebooted guest's driver probes afresh and plugs the request again.
    Call after the kernel model was rebooted (its blocks are gone)."""
    km = runner.km()
    qmp = runner.vm.qmp
    assert qmp is not None
    out: list[Mismatch] = []
    runner.pending_resizes = {}  # the rebooted driver asks for the current request
    for v in runner.current_vmems():
        since = qmp.cursor()
        t0 = time.monotonic()
        driver = _driver(runner, v)
        km.virtio_mem[v.id] = driver
        out += _settle(runner, driver, v.requested, since, t0, lat)
        lat[f"{v.id}_replugged_s"] = lat.pop("blocks_visible_s")
        lat.pop("size_reached_s", None)
    return out
