"""VM lifecycle steps: reset, reboot, pause and resume.

- ``reset`` (QMP ``system_reset``) and ``reboot`` (``reboot -f`` inside the
  guest; QEMU sees a guest-triggered ``RESET``) both reboot the guest: the
  DIMMs stay plugged at the same addresses (QEMU keeps its devices across a
  reset), and the guest's ACPI driver adds them again at boot, by slot,
  under the boot-time policy (:meth:`KernelMemory.reboot`).
- A ``device_del`` not yet answered when the reset comes (``remove`` with
  ``wait = false``): a reset clears the GPE status bits (hw/acpi/piix4.c
  ``piix4_pm_reset()`` -> hw/acpi/core.c ``acpi_gpe_reset()``; q35:
  hw/acpi/ich9.c ``pm_reset()``), but nothing
  resets ``MemStatus.is_removing`` (hw/acpi/memory_hotplug.c has no reset
  hook).  The guest boots without a GPE pending, so no ``MSCN`` scan sends
  the eject request: the DIMM stays and is enumerated at boot like any
  plugged DIMM, and no ``DEVICE_DELETED`` comes; the request stays set in
  QEMU, and the next memory hotplug GPE (a hot-add) makes the guest's
  ``MSCN`` scan find it and eject that DIMM too (``build_memory_hotplug_aml()``:
  the scan walks every slot, sending Device Check where the insert flag is
  set and Eject Request where the remove flag is); the new DIMM was placed
  while the old one still held its range.  How far the guest got before the reset is a race with
  three outcomes, which the step reads from QEMU's events since the
  ``device_del`` and predicts each: ``DEVICE_DELETED`` (ejected before the
  reset); an ``_OST`` for the eject request (the guest's scan had cleared
  the request: the DIMM stays, nothing pending); neither (the DIMM stays,
  the request pending).  All three were seen on QEMU 7.2 with Debian 6.1;
  the deterministic form (pause, remove, reset, resume, add) leaves the
  request set and the add ejects the DIMM on QEMU 7.2 and 10.0 alike.
- ``pause`` (``stop``) and ``resume`` (``cont``): a ``device_add`` while
  paused is QEMU's at once (``query-memory-devices``), the guest's only
  after ``cont`` (the GPE is handled when the vCPUs run); a ``device_del``
  while paused keeps the DIMM in QEMU until the guest, resumed, ejects it
  (``DEVICE_DELETED``).  A virtio-mem ``resize`` while paused changes
  QEMU's requested-size at once and the plugged size only after ``cont``,
  when the guest's driver acts (:func:`harness.steps.virtio_mem.after_resume`);
  a reset while paused has emptied every virtio-mem already
  (``virtio_mem_system_reset()`` runs in the reset, not at boot).  While
  paused only QEMU's view is observed (:meth:`Runner.observe_qemu_only`).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from harness.errors import HarnessError, HotplugRefused
from harness.qemu.vm import OST_EJECT_REQUEST
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner


def act_reset(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    t0 = time.monotonic()
    if runner.vm.paused:
        # The machine is reset now and boots at resume: the guest cannot
        # have answered an unplug requested while paused (a deterministic
        # unplug-then-reset: the request stays set in QEMU).
        runner.vm.reset_paused()
        lat["system_reset_s"] = time.monotonic() - t0
        runner.steps_done.append(step)
        runner.reset_while_paused = True
        return []
    runner.vm.reboot()
    lat["reboot_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    return _after_boot(runner, lat)


def act_reboot(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    t0 = time.monotonic()
    event = runner.vm.reboot_guest()
    lat["reboot_s"] = time.monotonic() - t0
    runner.step_notes["reset_event"] = event.data
    runner.steps_done.append(step)
    return _after_boot(runner, lat)


def _after_boot(runner: Runner, lat: dict[str, float]) -> list[Mismatch]:
    """The guest booted again with the DIMMs QEMU still has; every
    virtio-mem was emptied by the reset and its driver plugs the request
    again (:func:`harness.steps.virtio_mem.after_reset`)."""
    from harness.steps.virtio_mem import after_reset

    runner.pending_adds = []  # enumerated at boot like the others
    if runner.workloads:  # their tmpfs and processes went with the old boot
        runner.step_notes["workloads_ended"] = sorted(runner.workloads)
        runner.workloads.clear()
    _settle_unplugs_at_reset(runner)
    plugged = sorted((d for d in runner.current_dimms() if d.guest_accepts),
                     key=lambda d: d.slot)
    runner.km().reboot((d.id, d.node, d.blocks, d.size) for d in plugged)
    mismatches = after_reset(runner, lat)
    runner.set_baseline_totals(runner.vm.guest.snapshot())
    return mismatches


def _settle_unplugs_at_reset(runner: Runner) -> None:
    """Each pending unplug either completed before the reset (its
    ``DEVICE_DELETED`` came) or survives it (module doc)."""
    qmp = runner.vm.qmp
    assert qmp is not None
    outcome: dict[str, str] = {}
    for dimm_id, (request, _dimm, index) in list(runner.pending_unplugs.items()):
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
            runner.vm.wait_unplugged(request, timeout=1.0)  # seen: deletes the backend
            outcome[dimm_id] = "ejected by the guest before the reset"
        elif taken:
            runner.dropped_removes.add(index)
            outcome[dimm_id] = ("survived the reset; the guest had taken the eject request "
                                "(_OST), so none is left in QEMU")
        else:
            runner.dropped_removes.add(index)
            runner.stale_unplugs[dimm_id] = (request, index)
            outcome[dimm_id] = ("survived the reset with its eject request still set in "
                                "QEMU (is_removing): the next memory hotplug GPE ejects it")
        del runner.pending_unplugs[dimm_id]
    if outcome:
        runner.repredict()
        runner.step_notes["pending_unplugs_at_reset"] = outcome


def act_pause(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    t0 = time.monotonic()
    runner.vm.pause()
    lat["stop_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    return []


def act_resume(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    """``cont``, then what the guest does with what changed while paused:
    it adds the DIMMs plugged (blocks appear), ejects the ones unplugged
    (``DEVICE_DELETED``), or refuses an eject (``_OST`` failure)."""
    from harness.steps.dimm import UNMOVABLE_PAGE_DUMP, eject_stale, guest_adds
    from harness.steps.virtio_mem import after_resume

    qmp = runner.vm.qmp
    assert qmp is not None
    since = qmp.cursor()
    t0 = time.monotonic()
    runner.vm.resume()
    lat["cont_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    mismatches: list[Mismatch] = []
    if runner.reset_while_paused:
        lat["boot_s"] = lat.pop("cont_s")
        runner.reset_while_paused = False
        mismatches = _after_boot(runner, lat)
    mismatches += after_resume(runner, since, t0, lat)
    t1 = time.monotonic()
    plugged = {d.id for d in runner.current_dimms()}
    adds, runner.pending_adds = runner.pending_adds, []
    if adds:
        eject_stale(runner, lat)
    for dimm_id in adds:
        if dimm_id in plugged:
            guest_adds(runner, dimm_id, {})
    if adds:
        lat["guest_adds_s"] = time.monotonic() - t1
    t2 = time.monotonic()
    refused: list[HotplugRefused] = []
    for dimm_id, (request, _dimm, index) in list(runner.pending_unplugs.items()):
        del runner.pending_unplugs[dimm_id]
        try:
            runner.vm.wait_unplugged(request)
        except HotplugRefused as exc:
            runner.dropped_removes.add(index)
            runner.step_expects.append(UNMOVABLE_PAGE_DUMP)
            runner.repredict()
            with contextlib.suppress(HarnessError):
                runner.adopt_guest_blocks(dimm_id)
            refused.append(exc)
            continue
        runner.km().remove(dimm_id)
        lat["unplug_after_cont_s"] = time.monotonic() - t2
    if refused:
        raise refused[0]
    return mismatches
