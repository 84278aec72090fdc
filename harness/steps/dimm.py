"""The pc-dimm device's steps: add (and an add QEMU must refuse), remove.

Act over QMP, then tell the kernel model what the guest now has: the
DIMM's blocks (auto-onlined by the policy), or nothing (a refused add), or
the DIMM gone (a removal; one the guest refuses keeps it, as the guest
left its blocks).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, HotplugRefused
from harness.host.checks import (
    HostView,
    TouchPagesSampler,
    check_file,
    check_memdev,
    check_plug,
    check_unplug,
    file_pages,
)
from harness.model.backend import RAM, BackendSpec
from harness.retry import wait_for
from harness.steps.refusal import act_refused
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner

# mm/page_isolation.c: a failed isolation for offlining dumps the culprit
# (dump_page(page, "unmovable page")); it is how the kernel explains EBUSY.
UNMOVABLE_PAGE_DUMP = r"page dumped because: unmovable page"


def act_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.add is not None
    if step.expect_refusal is not None:
        return act_refused_add(runner, step, lat)
    a = step.add
    before = HostView.read() if a.backend.hugepages else None
    t0 = time.monotonic()
    sampler = TouchPagesSampler(runner.vm.pid) if a.backend.prealloc and runner.vm.pid \
        else contextlib.nullcontext()
    with sampler:
        runner.vm.hot_add(a.id, a.size, a.node, a.addr, a.backend)
    lat["device_add_s"] = time.monotonic() - t0
    host = _prealloc_threads(a.id, a.size, a.backend, sampler, lat, runner.scenario.smp)
    runner.steps_done.append(step)
    if a.backend != RAM:
        host += _host_after_plug(runner, a.id, before)
    if runner.vm.paused:
        # QEMU has it now (query-memory-devices lists it); the guest learns
        # of it from the GPE when its vCPUs run again (lifecycle.act_resume).
        runner.pending_adds.append(a.id)
        return host
    eject_stale(runner, lat)
    return host + guest_adds(runner, a.id, lat)


def eject_stale(runner: Runner, lat: dict[str, float]) -> None:
    """After a hot-add's GPE reached the running guest: the stale eject
    requests it carries out (see :func:`_stale_ejected_now`)."""
    for dimm_id, request in _stale_ejected_now(runner):
        t1 = time.monotonic()
        runner.vm.wait_unplugged(request)
        lat[f"stale_unplug_{dimm_id}_s"] = time.monotonic() - t1
        runner.km().remove(dimm_id)


def _ops_done(runner: Runner) -> int:
    """How many model ops the run has acted: the index the next one gets."""
    return sum(1 for s in runner.steps_done if s.is_model_op)


def _stale_ejected_now(runner: Runner) -> list[tuple[str, Any]]:
    """An eject request a reset left set in QEMU is found by the guest's
    ``MSCN`` scan on this hot-add's GPE: the removal takes effect now,
    after this add (placed while the old DIMM was still there)."""
    if not runner.stale_unplugs:
        return []
    add_index = _ops_done(runner) - 1
    out = []
    for dimm_id, (request, index) in runner.stale_unplugs.items():
        runner.dropped_removes.discard(index)
        runner.op_after[index] = add_index
        out.append((dimm_id, request))
    runner.stale_unplugs.clear()
    runner.repredict()
    runner.step_notes["stale_unplugs_ejected"] = [d for d, _ in out]
    return out


def guest_adds(runner: Runner, dimm_id: str, lat: dict[str, float]) -> list[Mismatch]:
    """The guest adds the DIMM's blocks (onlined by its policy): tell the
    kernel model and wait until the guest shows them."""
    d = runner.dimm(dimm_id)
    if not d.guest_accepts:
        return []
    outcomes = runner.km().hot_add(d.id, d.node, d.blocks, d.size)
    t1 = time.monotonic()
    from harness.session import wait_blocks

    wait_blocks(runner.vm, list(d.blocks), present=True,
                state="online" if outcomes and all(o.ok for o in outcomes) else None)
    lat["blocks_visible_s"] = time.monotonic() - t1
    return []


def act_refused_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    """An add the scenario expects QEMU to refuse: QEMU's words must be the
    model's, and nothing changes (the scenario goes on)."""
    assert step.add is not None
    a = step.add
    return act_refused(runner, step, lat,
                       lambda: runner.vm.hot_add(a.id, a.size, a.node, a.addr, a.backend),
                       "device_add_s")


def act_remove(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    d = runner.dimm(step.dimm)
    if runner.vm.paused or not step.wait:
        # device_del only: the DIMM is the guest's to eject (after resume),
        # or the next reset's to decide (lifecycle.act_resume, act_reset).
        index = _ops_done(runner)
        t0 = time.monotonic()
        request = runner.vm.request_unplug(step.dimm)
        lat["device_del_s"] = time.monotonic() - t0
        runner.pending_unplugs[step.dimm] = (request, d, index)
        runner.steps_done.append(step)
        return []
    plugged = HostView.read() if d.backend.hugepages else None
    path = _backend_file(runner, step.dimm)
    in_file = file_pages(path, d.backend)
    t0 = time.monotonic()
    try:
        runner.vm.hot_remove(step.dimm)
    except HotplugRefused:
        # The DIMM stays: later steps are predicted with it still plugged,
        # and its blocks as the guest left them (an ACPI eject that fails
        # re-onlines what it had offlined).
        index = _ops_done(runner)
        runner.dropped_removes.add(index)
        runner.step_expects.append(UNMOVABLE_PAGE_DUMP)
        runner.steps_done.append(step)
        runner.repredict()
        with contextlib.suppress(HarnessError):
            runner.adopt_guest_blocks(step.dimm)
        raise
    lat["unplug_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    runner.km().remove(step.dimm)
    t1 = time.monotonic()
    host = _settled(lambda: ([] if plugged is None else check_unplug(
        plugged, HostView.read(), d.backend, d.hugepages, step.dimm, in_file))
        + check_file(path, d.backend, plugged=False, subject=step.dimm))
    if plugged is not None:
        lat["host_release_s"] = time.monotonic() - t1
    return host


def _prealloc_threads(dimm_id: str, size: int, backend: BackendSpec, sampler: object,
                      lat: dict[str, float], vcpus: int) -> list[Mismatch]:
    """QEMU's prealloc threads seen vs its rule (more than the rule is a finding)."""
    if not isinstance(sampler, TouchPagesSampler):
        return []
    rule = backend.prealloc_threads_used(size, os.cpu_count() or 1, vcpus)
    lat["prealloc_threads_seen"] = sampler.peak
    lat["prealloc_threads_rule"] = rule
    if sampler.peak > rule:
        return [Mismatch("prealloc threads (touch_pages)", dimm_id, rule, sampler.peak, "host")]
    return []


def _backend_file(runner: Runner, dimm_id: str) -> Path | None:
    dev = runner.vm.memory_devices.get(dimm_id)
    path = dict(dev.backend.props).get("mem-path") if dev is not None else None
    return Path(path) if path else None


def _host_after_plug(runner: Runner, dimm_id: str, before: HostView | None) -> list[Mismatch]:
    """The host side of a plugged non-RAM backend (harness.host.checks)."""
    d = runner.dimm(dimm_id)
    dev = runner.vm.memory_devices[dimm_id]
    out = check_memdev(runner.vm.execute("query-memdev", phase="observe"), dev.backend.id,
                       d.backend, d.size, dimm_id)
    if before is not None:
        out += check_plug(before, HostView.read(), d.backend, d.hugepages, dimm_id)
    out += check_file(_backend_file(runner, dimm_id), d.backend, plugged=True, subject=dimm_id)
    return out


def _settled(check: Callable[[], list[Mismatch]], timeout: float = 15.0) -> list[Mismatch]:
    """``check`` until it finds nothing, or its last findings at the
    timeout: QEMU frees a RAM block (munmap, close of the memfd) after an
    RCU grace period, not within object-del (system/physmem.c
    ``qemu_ram_free()`` -> ``call_rcu(reclaim_ramblock)``)."""
    last: list[Mismatch] = []

    def clean() -> bool | None:
        nonlocal last
        last = check()
        return True if not last else None

    try:
        wait_for(clean, what="the host to get the backend's memory back", timeout=timeout,
                 phase="observe")
    except HarnessError:
        return last
    return []
