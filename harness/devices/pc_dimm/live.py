"""The pc-dimm on a running VM: add (and one QEMU must refuse), remove,
and what a pause, a reset and a migration do to its hotplug requests.

Each act goes over QMP, then tells the kernel model what the guest now
has: the DIMM's blocks (auto-onlined by the policy), or nothing (a refused
add), or the DIMM gone (a removal; one the guest refuses keeps it, as the
guest left its blocks).

The ACPI memory hotplug device keeps state across steps
(:class:`KindState`):

- while paused, a ``device_add`` is QEMU's at once (``query-memory-devices``)
  and the guest's only after ``cont`` (the GPE is handled when the vCPUs
  run); a ``device_del`` keeps the DIMM in QEMU until the guest, resumed,
  ejects it (``DEVICE_DELETED``);
- a ``device_del`` not yet answered when a reset comes (``remove`` with
  ``wait = false``): a reset clears the GPE status bits (hw/acpi/piix4.c
  ``piix4_pm_reset()`` -> hw/acpi/core.c ``acpi_gpe_reset()``; q35:
  hw/acpi/ich9.c ``pm_reset()``), but nothing resets
  ``MemStatus.is_removing`` (hw/acpi/memory_hotplug.c has no reset hook).
  The guest boots without a GPE pending, so no ``MSCN`` scan sends the
  eject request: the DIMM stays and is enumerated at boot like any plugged
  DIMM, and no ``DEVICE_DELETED`` comes; the request stays set in QEMU,
  and the next memory hotplug GPE (a hot-add) makes the guest's ``MSCN``
  scan find it and eject that DIMM too (``build_memory_hotplug_aml()``:
  the scan walks every slot, sending Device Check where the insert flag is
  set and Eject Request where the remove flag is); the new DIMM was placed
  while the old one still held its range.  How far the guest got before
  the reset is a race with three outcomes, which :func:`at_reset` reads
  from QEMU's events since the ``device_del`` and predicts each:
  ``DEVICE_DELETED`` (ejected before the reset); an ``_OST`` for the eject
  request (the guest's scan had cleared the request: the DIMM stays,
  nothing pending); neither (the DIMM stays, the request pending).  All
  three were seen on QEMU 7.2 with Debian 6.1; the deterministic form
  (pause, remove, reset, resume, add) leaves the request set and the add
  ejects the DIMM on QEMU 7.2 and 10.0 alike;
- ``is_removing`` is not in ``vmstate_memhp_sts`` (hw/acpi/memory_hotplug.c
  v7.2.0): a migration destination forgets a stale request.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.devices.pc_dimm import host
from harness.devices.pc_dimm.model import KIND, PlacedDimm
from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.pc_dimm.qemu import dimm_json, records
from harness.errors import HotplugRefused
from harness.guest.splats import UNMOVABLE_PAGE_DUMP
from harness.host.checks import HostView, TouchPagesSampler, file_pages
from harness.model.backend import RAM
from harness.qemu.vm import OST_EJECT_REQUEST
from harness.run.observe import wait_blocks
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext
    from harness.run.state import RunState
    from harness.run.steps.device import RemoveStep

JSON_KEY = "dimms"  # its list in a result document's expected/observed halves


@dataclass
class KindState:
    """The ACPI hotplug requests between steps (module doc)."""

    pending_adds: list[str] = field(default_factory=list)  # plugged while paused
    # device_del sent, DEVICE_DELETED not yet seen: id -> (request, the
    # DIMM, the removal's index among the plan's operations)
    pending_unplugs: dict[str, tuple[Any, PlacedDimm, int]] = field(default_factory=dict)
    # eject requests a reset left set in QEMU: id -> (request, op index)
    stale_unplugs: dict[str, tuple[Any, int]] = field(default_factory=dict)
    # insert events a reset left set in QEMU (is_inserting): they shadow
    # their slot's eject request in the next MSCN scan, which clears them
    stale_inserts: set[str] = field(default_factory=set)


def _ks(ctx: StepContext) -> KindState:
    return ctx.kind_state(KIND)  # type: ignore[no-any-return]


# -- acts -------------------------------------------------------------------------

def plug(ctx: StepContext, op: AddDimm) -> Any:
    """The QMP commands of a hot-add (backend, then device); QEMU's record of it."""
    return ctx.vm.hot_add(op.id, op.size, op.node, op.addr, op.backend)


def add(ctx: StepContext, op: AddDimm) -> list[Mismatch]:
    before = HostView.read() if op.backend.hugepages else None
    t0 = time.monotonic()
    sampler = TouchPagesSampler(ctx.vm.pid) if op.backend.prealloc and ctx.vm.pid \
        else contextlib.nullcontext()
    with sampler:
        seen = plug(ctx, op)
    ctx.lat["device_add_s"] = time.monotonic() - t0
    found = host.prealloc_threads(op, sampler, ctx.lat, ctx.smp)
    ctx.took_effect()
    if op.backend != RAM:
        found += host.after_plug(ctx, ctx.state.placed(KIND, op.id), before)
    if ctx.vm.paused:
        # QEMU has it now (query-memory-devices lists it); the guest learns
        # of it from the GPE when its vCPUs run again (after_resume).
        _ks(ctx).pending_adds.append(op.id)
        return found
    gpe(ctx)
    return found + guest_adds(ctx, op.id, qemu_addr=getattr(seen, "addr", None))


def gpe(ctx: StepContext) -> None:
    """A memory hotplug GPE reached the running guest: its ``MSCN`` scan
    ejects what reset-stale requests asked (:func:`eject_stale`) and clears
    every stale insert event (Device Check for a DIMM the guest has)."""
    eject_stale(ctx)
    _ks(ctx).stale_inserts.clear()


def shadow(ctx: StepContext, dimm_id: str, request: Any, index: int) -> None:
    """The eject request of a DIMM with a stale insert event: the scan sent
    Device Check instead (``_OST`` source 1), the request stays set in QEMU
    for the next GPE (:func:`harness.run.steps.timing.op_timing`)."""
    ks = _ks(ctx)
    ctx.state.waiting.discard(index)
    ctx.state.dropped.add(index)
    ks.stale_unplugs[dimm_id] = (request, index)
    ctx.state.repredict()
    ctx.notes.setdefault("ejects_shadowed", []).append(
        f"{dimm_id}: its insert event, left set by a reset while paused, shadowed the "
        "eject request (Device Check sent instead); the request waits for the next GPE")


def eject_stale(ctx: StepContext) -> None:
    """After a hot-add's GPE reached the running guest: an eject request a
    reset left set in QEMU is found by the guest's ``MSCN`` scan, and that
    removal takes effect now, after this add (placed while the old DIMM
    was still there)."""
    ks = _ks(ctx)
    if not ks.stale_unplugs:
        return
    state = ctx.state
    add_index = state.ops_acted - 1
    ejected = []
    for dimm_id, (request, index) in ks.stale_unplugs.items():
        state.dropped.discard(index)
        state.op_after[index] = add_index
        ejected.append((dimm_id, request))
    ks.stale_unplugs.clear()
    state.repredict()
    ctx.notes["stale_unplugs_ejected"] = [d for d, _ in ejected]
    for dimm_id, request in ejected:
        t1 = time.monotonic()
        ctx.vm.wait_unplugged(request)
        ctx.lat[f"stale_unplug_{dimm_id}_s"] = time.monotonic() - t1
        state.km().remove(dimm_id)


def guest_adds(ctx: StepContext, dimm_id: str, lat: dict[str, float] | None = None,
               qemu_addr: int | None = None) -> list[Mismatch]:
    """The guest adds the DIMM's blocks (onlined by its policy): tell the
    kernel model and wait until the guest shows them.  Where QEMU put the
    DIMM elsewhere than the model (``qemu_addr``), the model's blocks will
    not come: nothing is waited for, and the comparison names the address."""
    d = ctx.state.placed(KIND, dimm_id)
    if not d.guest_accepts:
        return []
    outcomes = ctx.state.km().hot_add(d.id, d.node, d.blocks, d.size)
    if qemu_addr is not None and qemu_addr != d.addr:
        ctx.notes["not_waited"] = (f"{dimm_id}: QEMU placed it at {qemu_addr:#x}, the model "
                                   f"at {d.addr:#x}; its blocks were not waited for")
        return []
    t1 = time.monotonic()
    wait_blocks(ctx.vm, list(d.blocks), present=True,
                state="online" if outcomes and all(o.ok for o in outcomes) else None)
    (ctx.lat if lat is None else lat)["blocks_visible_s"] = time.monotonic() - t1
    return []


def remove(ctx: StepContext, step: RemoveStep) -> list[Mismatch]:
    state = ctx.state
    d = state.placed(KIND, step.id)
    if not ctx.vm.paused and step.id in _ks(ctx).stale_inserts:
        index = state.ops_acted
        request = ctx.vm.request_unplug(step.id)
        ctx.took_effect()
        gpe(ctx)
        shadow(ctx, step.id, request, index)
        return []
    if ctx.vm.paused or not step.wait:
        # device_del only: the DIMM is the guest's to eject (after resume),
        # or the next reset's to decide (at_reset).
        index = state.ops_acted
        t0 = time.monotonic()
        request = ctx.vm.request_unplug(step.id)
        ctx.lat["device_del_s"] = time.monotonic() - t0
        _ks(ctx).pending_unplugs[step.id] = (request, d, index)
        if ctx.vm.paused:  # QEMU keeps the DIMM until the guest ejects it
            state.waiting.add(index)
        ctx.took_effect()
        if not ctx.vm.paused:
            gpe(ctx)
        return []
    plugged = HostView.read() if d.backend.hugepages else None
    path = host.backend_file(ctx, step.id)
    in_file = file_pages(path, d.backend)
    t0 = time.monotonic()
    try:
        ctx.vm.hot_remove(step.id)
    except HotplugRefused:
        # The DIMM stays: later steps are predicted with it still plugged,
        # and its blocks as the guest left them (an ACPI eject that fails
        # re-onlines what it had offlined).
        index = state.ops_acted
        ctx.took_effect()
        ctx.expects.append(UNMOVABLE_PAGE_DUMP)
        state.drop(index)
        ctx.adopt_quietly(step.id)
        gpe(ctx)
        raise
    ctx.lat["unplug_s"] = time.monotonic() - t0
    ctx.took_effect()
    state.km().remove(step.id)
    gpe(ctx)
    return host.after_unplug(ctx, d, plugged, path, in_file)


# -- what the lifecycle does to it ----------------------------------------------------

def at_reset(ctx: StepContext) -> None:
    """Each pending unplug either completed before the reset (its
    ``DEVICE_DELETED`` came) or survives it (module doc)."""
    ks = _ks(ctx)
    if ctx.state.reset_while_paused:  # booting at resume: the GPEs of the pause are lost
        ks.stale_inserts |= set(ks.pending_adds)
    ks.pending_adds = []  # enumerated at boot like the others
    qmp = ctx.vm.qmp
    assert qmp is not None
    outcome: dict[str, str] = {}
    for dimm_id, (request, _dimm, index) in list(ks.pending_unplugs.items()):
        ctx.state.waiting.discard(index)
        events = qmp.events(request.cursor)
        deleted = any(ev.name == "DEVICE_DELETED" and ev.data.get("device") == dimm_id
                      for ev in events)
        # _OST with source 3 (eject request) for it: the guest's MSCN scan ran
        # and cleared MRMV (is_removing) before the reset came.
        taken = any(ev.name == "ACPI_DEVICE_OST"
                    and ev.data.get("info", {}).get("device") == dimm_id
                    and ev.data.get("info", {}).get("source") == OST_EJECT_REQUEST
                    for ev in events)
        if deleted:
            ctx.vm.wait_unplugged(request, timeout=1.0)  # seen: deletes the backend
            outcome[dimm_id] = "ejected by the guest before the reset"
        elif taken:
            ctx.state.dropped.add(index)
            outcome[dimm_id] = ("survived the reset; the guest had taken the eject request "
                                "(_OST), so none is left in QEMU")
        else:
            ctx.state.dropped.add(index)
            ks.stale_unplugs[dimm_id] = (request, index)
            outcome[dimm_id] = ("survived the reset with its eject request still set in "
                                "QEMU (is_removing): the next memory hotplug GPE ejects it")
        del ks.pending_unplugs[dimm_id]
    if outcome:
        ctx.state.repredict()
        ctx.notes["pending_unplugs_at_reset"] = outcome


def boot_memory(state: RunState) -> list[tuple[str, int, tuple[int, ...], int]]:
    """The DIMMs the booting guest's ACPI driver adds, by slot."""
    plugged = sorted((d for d in state.current(KIND) if d.guest_accepts),
                     key=lambda d: d.slot)
    return [(d.id, d.node, d.blocks, d.size) for d in plugged]


def after_boot(ctx: StepContext) -> list[Mismatch]:
    return []


def after_resume(ctx: StepContext, since: int, t0: float) -> list[Mismatch]:
    """The guest adds the DIMMs plugged while paused (blocks appear),
    ejects the ones unplugged (``DEVICE_DELETED``), or refuses an eject
    (``_OST`` failure: raised after the others were followed)."""
    ks = _ks(ctx)
    # after a reset in this pause at_reset has settled every request already
    # (the guest booted: nothing of the pause reaches it as a GPE)
    t1 = time.monotonic()
    plugged = {d.id for d in ctx.state.current(KIND)}
    adds, ks.pending_adds = ks.pending_adds, []
    if adds or ks.pending_unplugs:  # a GPE: one MSCN scan
        eject_stale(ctx)
        for dimm_id in sorted(ks.stale_inserts & set(ks.pending_unplugs)):
            request, _dimm, index = ks.pending_unplugs.pop(dimm_id)
            shadow(ctx, dimm_id, request, index)
        ks.stale_inserts.clear()
    for dimm_id in adds:
        if dimm_id in plugged:
            guest_adds(ctx, dimm_id, {})
    if adds:
        ctx.lat["guest_adds_s"] = time.monotonic() - t1
    t2 = time.monotonic()
    refused: list[HotplugRefused] = []
    for dimm_id, (request, _dimm, index) in list(ks.pending_unplugs.items()):
        del ks.pending_unplugs[dimm_id]
        ctx.state.waiting.discard(index)  # the guest answers now
        try:
            ctx.vm.wait_unplugged(request)
        except HotplugRefused as exc:
            ctx.expects.append(UNMOVABLE_PAGE_DUMP)
            ctx.state.drop(index)
            ctx.adopt_quietly(dimm_id)
            refused.append(exc)
            continue
        ctx.state.km().remove(dimm_id)
        ctx.lat["unplug_after_cont_s"] = time.monotonic() - t2
    if refused:
        raise refused[0]
    return []


def after_migrate(ctx: StepContext) -> None:
    ks = _ks(ctx)
    if ks.stale_unplugs:
        # is_removing is not in vmstate_memhp_sts: the destination does not
        # know of the request any more.
        ctx.notes["stale_unplugs_forgotten"] = sorted(ks.stale_unplugs)
        ks.stale_unplugs.clear()


# -- what is compared -------------------------------------------------------------------

def pending(state: RunState) -> list[str]:
    """Devices whose unplug is in flight (the guest's view is a race)."""
    ks = state.kinds.get(KIND)
    return sorted(ks.pending_unplugs) if ks is not None else []


def expected(state: RunState, paused: bool) -> list[Any]:
    """The DIMMs QEMU must report: the model's (a DIMM whose device_del
    came while paused is still there, :class:`harness.run.steps.timing.OpTiming`)."""
    return list(state.current(KIND))


def observed(entries: list[dict[str, Any]], state: RunState, paused: bool) -> list[Any]:
    """QEMU's DIMMs; while the guest runs, one whose unplug is pending is
    left out (maybe ejected by now, maybe not)."""
    seen = list(records(entries))
    if not paused:
        seen = [d for d in seen if d.id not in pending(state)]
    return seen


def expected_json(state: RunState) -> list[dict[str, Any]]:
    """The model's DIMMs, those whose unplug is pending marked (and listed
    when the model has let them go already: wait = false on a running guest)."""
    ks = state.kinds.get(KIND)
    unplugging = {} if ks is None else {d.id: d for _, d, _ in ks.pending_unplugs.values()}
    current = state.current(KIND)
    mark = {"unplug_pending": True}
    return [dimm_json(d) | (mark if d.id in unplugging else {}) for d in current] + [
        dimm_json(d) | mark for d in unplugging.values() if d.id not in {c.id for c in current}]


def observed_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dimm_json(d) for d in records(entries)]
