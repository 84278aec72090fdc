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
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from harness.devices.virtio_mem.driver import UnmodelledDriver, VirtioMemDriver, rules_for
from harness.devices.virtio_mem.model import KIND
from harness.devices.virtio_mem.ops import AddVirtioMem
from harness.devices.virtio_mem.qemu import ExpectedVirtioMem, records
from harness.devices.virtio_mem.rules import PlacedVirtioMem
from harness.errors import QMPCommandError, UsageError, VMError, WaitTimeout
from harness.guest.iomem import merged_ranges, parse_iomem
from harness.model.kernel.rules import extrapolation_note
from harness.retry import wait_for
from harness.run.observe import block_states, wait_blocks
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext
    from harness.run.state import RunState
    from harness.run.steps.device import RemoveStep, ResizeStep

log = logging.getLogger("harness.devices.virtio_mem")
JSON_KEY = "virtio_mem"  # its list in a result document's expected/observed halves


@dataclass
class KindState:
    """The guest driver's model per device, and requests the guest has not seen."""

    drivers: dict[str, VirtioMemDriver] = field(default_factory=dict)
    # resized while paused: id -> request, the guest acts at resume
    pending_resizes: dict[str, int] = field(default_factory=dict)


def _ks(ctx: StepContext) -> KindState:
    return ctx.kind_state(KIND)  # type: ignore[no-any-return]

def placed(ctx: StepContext, vmem_id: str) -> PlacedVirtioMem:
    for v in ctx.state.current(KIND):
        if v.id == vmem_id:
            return v
    raise UsageError(f"virtio-mem {vmem_id!r} is not plugged at this step", value=vmem_id)


def driver_view(ctx: StepContext, driver: VirtioMemDriver) -> list[Mismatch]:
    """The driver's own view (``/proc/iomem``): its region where QEMU put
    the device, and the memory it added exactly the model's blocks.  The
    driver claims the region when it probes the device, which a hot-plug
    with nothing requested does not wait for (found by memhp fuzz: a
    virtio-mem added with requested 0 read before the probe): the region is
    waited for, bounded, before it is compared."""
    def claimed() -> Any:
        return parse_iomem(ctx.vm.ssh(["cat", "/proc/iomem"]).stdout).get(driver.addr)

    try:
        region = wait_for(claimed, what=f"{driver.id}'s driver to claim its region in "
                          "/proc/iomem", timeout=ctx.vm.timeouts.s("hot_add"),
                          first_interval=0.01, max_interval=0.2, phase="hotplug")
    except WaitTimeout:
        region = None
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


def _settle(ctx: StepContext, driver: VirtioMemDriver, requested: int, since: int, t0: float,
            lat: dict[str, float]) -> list[Mismatch]:
    """Tell the driver model the request; wait for the blocks and QEMU's
    size; then compare the driver's own view."""

    km = ctx.state.km()
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
        wait_blocks(ctx.vm, after, present=True, state="online" if online else None)
        # Unplugging online memory migrates its pages first: as slow as an eject.
        wait_blocks(ctx.vm, gone, present=False, timeout=ctx.vm.timeouts.s("unplug"))
        lat["blocks_visible_s"] = time.monotonic() - t0
        # QEMU rate-limits MEMORY_DEVICE_SIZE_CHANGE to one per second per device
        # (monitor/monitor.c monitor_qapi_event_conf): it can trail the blocks by 1 s.
        ctx.vm.wait_virtio_mem_size(driver.id, target, since=since,
                                       timeout=ctx.vm.timeouts.s("unplug"))
        lat["size_reached_s"] = time.monotonic() - t0
    except WaitTimeout:
        if not driver.uncertain:
            raise
        why = _accept_observed(ctx, driver, before | set(after))
        if why is not None:
            log.warning("%s: the outcome the guest reached is not one busy kernel-zone memory "
                        "explains: %s", driver.id, why)
            raise
        lat["blocks_visible_s"] = lat["size_reached_s"] = time.monotonic() - t0
    return driver_view(ctx, driver)


def _accept_observed(ctx: StepContext, driver: VirtioMemDriver, blocks: set[int]) -> str | None:
    """Offer QEMU's plugged size and the guest's blocks (of ``blocks``) to the
    driver model (:meth:`VirtioMemDriver.accept`); None when taken."""

    size = next((v.size for v in ctx.vm.query_virtio_mem() if v.id == driver.id), None)
    if size is None:
        return f"QEMU reports no virtio-mem {driver.id}"
    numbers = sorted(blocks | set(driver.blocks()))
    present = {n for n, st in block_states(ctx.vm, numbers).items() if st is not None}
    if size == driver.plugged_size and present == set(driver.blocks()):
        return None
    why = driver.accept(ctx.state.km(), size, present)
    if why is None:
        log.warning("%s: the guest kept %d MiB busy in kernel-zone blocks %s (plugged %d MiB; "
                    "the driver retries later): a legitimate outcome, the model follows it",
                    driver.id, driver.busy_bytes >> 20, list(driver.blocks()),
                    driver.plugged_size >> 20)
    return why


def _catch_up(ctx: StepContext, driver: VirtioMemDriver) -> None:
    """Busy memory left plugged may have been freed since (the driver's retry
    timer): follow it before the next act, when busy memory explains it."""
    if driver.busy_bytes:
        why = _accept_observed(ctx, driver, set(driver.blocks()))
        if why is not None:
            log.warning("%s: since the last step the guest moved to an outcome the model "
                        "cannot explain (%s); the comparison will show it", driver.id, why)


def _driver(ctx: StepContext, v: PlacedVirtioMem) -> VirtioMemDriver:
    try:
        version = ctx.state.km().policy.version
        note = extrapolation_note("the virtio-mem driver", version,
                                  rules_for(version).extrapolated_from)
        if note is not None:
            log.warning("%s: %s", v.id, note)
        if ctx.state.km().policy.online_policy == "auto-movable":
            # virtio-mem memory forms *dynamic* memory groups, which
            # auto_movable_zone_for_pfn() treats unlike the DIMMs' static ones.
            raise UnmodelledDriver(
                f"virtio-mem {v.id}: the auto-movable online policy with virtio-mem's "
                "dynamic memory groups is not modelled")
        return VirtioMemDriver(v.id, v.addr, v.size, v.block_size, v.node, ctx.state.block_size)
    except UnmodelledDriver as exc:
        raise VMError(str(exc), phase="model") from exc


def known_driver(ctx: StepContext, vmem_id: str) -> VirtioMemDriver:
    """The model of ``vmem_id``'s guest driver; a device added with a driver
    configuration that is not modelled fails with the reason (VMError), each
    step again, rather than with a KeyError."""
    ctx.state.km()  # the baseline was taken
    driver = _ks(ctx).drivers.get(vmem_id)
    if driver is None:
        driver = _driver(ctx, placed(ctx, vmem_id))  # raises the reason
        _ks(ctx).drivers[vmem_id] = driver
    return driver


# The driver's name in drivers/virtio/virtio_mem.c (virtio_mem_driver.driver.name
# = KBUILD_MODNAME), present once the module is loaded or built in.
DRIVER_DIR = "/sys/bus/virtio/drivers/virtio_mem"


def check_guest_driver(ctx: StepContext) -> None:
    """A guest kernel without the driver plugs nothing: say so before the
    device is added, rather than time out waiting for its blocks."""
    res = ctx.vm.shell.run(["test", "-d", DRIVER_DIR], check=False,
                              timeout=ctx.vm.timeouts.s("command"))
    if res.status != 0:
        raise VMError(
            f"the guest kernel has no virtio-mem driver ({DRIVER_DIR} is missing): "
            "build it with CONFIG_VIRTIO_MEM=y or =m (memhp's guest image loads the "
            "virtio_mem module when the kernel has one)", phase="hotplug")


def _command(ctx: StepContext, action: Callable[[], object], lat_key: str
             ) -> tuple[int, float]:
    """Run the step's QMP command (``ctx.lat[lat_key]`` is how long it took),
    which takes effect; return the QMP cursor from before it (the size
    event comes after) and its start time."""
    qmp = ctx.vm.qmp
    assert qmp is not None
    since = qmp.cursor()
    t0 = time.monotonic()
    action()
    ctx.lat[lat_key] = time.monotonic() - t0
    ctx.took_effect()
    return since, t0


def plug(ctx: StepContext, op: AddVirtioMem) -> None:
    """The QMP commands of a hot-add (backend, then device)."""
    ctx.vm.hot_add_virtio_mem(op.id, op.size, op.node, op.requested,
                              block_size=op.block_size, memaddr=op.addr,
                              unplugged_inaccessible=op.unplugged_inaccessible,
                              dynamic_memslots=op.dynamic_memslots)


def add(ctx: StepContext, op: AddVirtioMem) -> list[Mismatch]:
    check_guest_driver(ctx)
    since, t0 = _command(ctx, lambda: plug(ctx, op), "device_add_s")
    v = placed(ctx, op.id)
    driver = _driver(ctx, v)
    _ks(ctx).drivers[op.id] = driver
    seen = next((q for q in ctx.vm.query_virtio_mem() if q.id == op.id), None)
    if seen is not None and seen.addr != v.addr:
        # The model's blocks will not come: nothing is waited for, and the
        # comparison names the address.
        driver.resize(ctx.state.km(), op.requested)
        ctx.notes["not_waited"] = (f"{op.id}: QEMU placed it at {seen.addr:#x}, the model at "
                                   f"{v.addr:#x}; its blocks were not waited for")
        return []
    return _settle(ctx, driver, op.requested, since, t0, ctx.lat)


def resize(ctx: StepContext, step: ResizeStep) -> list[Mismatch]:
    driver = known_driver(ctx, step.id)
    if not ctx.vm.paused:
        _catch_up(ctx, driver)
    since, t0 = _command(ctx, lambda: ctx.vm.resize_virtio_mem(step.id, step.requested),
                         "qom_set_s")
    if ctx.vm.paused:
        # QEMU takes the request at once (virtio_mem_set_requested_size():
        # requested-size and the usable region change, virtio_notify_config()
        # raises the config interrupt), but no vCPU runs to take it: the
        # plugged size stays until the guest's driver acts after cont.  The
        # runner observes QEMU only meanwhile; the last request wins.
        _ks(ctx).pending_resizes[step.id] = step.requested
        return []
    return _settle(ctx, driver, step.requested, since, t0, ctx.lat)


def remove(ctx: StepContext, step: RemoveStep) -> list[Mismatch]:
    km = ctx.state.km()
    driver = _ks(ctx).drivers.get(step.id)
    if driver is not None and not ctx.vm.paused:
        _catch_up(ctx, driver)
    t0 = time.monotonic()
    try:
        ctx.vm.hot_remove(step.id)
    except QMPCommandError as exc:
        if driver is None or not driver.busy_bytes or not driver.plugged_size \
                or "still plugged" not in str(exc):
            raise
        # virtio_mem_unplug_request_check(): QEMU refuses while any memory is
        # plugged, and the guest keeps busy kernel-zone memory plugged.
        ctx.lat["qmp_s"] = time.monotonic() - t0
        log.warning("%s: QEMU refused device_del (%s): the guest still keeps %d MiB busy; "
                    "the expected outcome while it does: the device stays", step.id,
                    exc, driver.plugged_size >> 20)
        return []
    ctx.lat["unplug_s"] = time.monotonic() - t0
    ctx.took_effect()
    if driver is not None:
        _ks(ctx).drivers.pop(step.id).remove_all(km)
    return []


# -- what the lifecycle does to it ----------------------------------------------------

def at_reset(ctx: StepContext) -> None:
    """Nothing to settle: ``system_reset`` empties every virtio-mem (QEMU's
    ``virtio_mem_system_reset()`` -> ``virtio_mem_unplug_all()``)."""


def boot_memory(state: RunState) -> list[tuple[str, int, tuple[int, ...], int]]:
    """None: the booting guest finds its virtio-mem devices empty."""
    return []


def after_boot(ctx: StepContext) -> list[Mismatch]:
    """The rebooted guest's driver probes afresh and plugs the request again
    (the kernel model was rebooted: its blocks are gone)."""
    qmp = ctx.vm.qmp
    assert qmp is not None
    out: list[Mismatch] = []
    _ks(ctx).pending_resizes = {}  # the rebooted driver asks for the current request
    for v in ctx.state.current(KIND):
        since = qmp.cursor()
        t0 = time.monotonic()
        driver = _driver(ctx, v)
        _ks(ctx).drivers[v.id] = driver
        out += _settle(ctx, driver, v.requested, since, t0, ctx.lat)
        ctx.lat[f"{v.id}_replugged_s"] = ctx.lat.pop("blocks_visible_s")
        ctx.lat.pop("size_reached_s", None)
    return out


def after_resume(ctx: StepContext, since: int, t0: float) -> list[Mismatch]:
    """The guest runs again: its driver reads the config changed while
    paused (drivers/virtio/virtio_mem.c virtio_mem_config_changed() queues
    the work that reads ``requested_size``) and plugs or unplugs as for any
    resize; ``since`` is the QMP cursor taken before ``cont``."""
    ks = _ks(ctx)
    pending, ks.pending_resizes = ks.pending_resizes, {}
    out: list[Mismatch] = []
    lat = ctx.lat
    for vmem_id, requested in pending.items():
        out += _settle(ctx, known_driver(ctx, vmem_id), requested, since, t0, lat)
        lat[f"{vmem_id}_after_cont_s"] = lat.pop("blocks_visible_s")
        lat[f"{vmem_id}_size_after_cont_s"] = lat.pop("size_reached_s")
    return out


def after_migrate(ctx: StepContext) -> None:
    """Nothing: the plugged bitmap and the request travel with the device."""


# -- what is compared -------------------------------------------------------------------

def pending(state: RunState) -> list[str]:
    return []


def expected(state: RunState, paused: bool) -> list[ExpectedVirtioMem]:
    """QEMU's view of each virtio-mem: the model's placement and request,
    and the size the guest driver's model has plugged."""
    ks = state.kinds.get(KIND)
    drivers = ks.drivers if ks is not None else {}
    emptied = state.reset_while_paused  # virtio_mem_system_reset() unplugged all
    return [ExpectedVirtioMem(v.id, v.addr, v.size, v.block_size, v.node, v.requested,
                              drivers[v.id].plugged_size
                              if v.id in drivers and not emptied else 0)
            for v in state.current(KIND)]


def observed(entries: list[dict[str, Any]], state: RunState, paused: bool) -> list[Any]:
    return list(records(entries))


def expected_json(state: RunState) -> list[dict[str, Any]]:
    return [asdict(v) for v in expected(state, False)]


def observed_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [asdict(v) for v in records(entries)]
