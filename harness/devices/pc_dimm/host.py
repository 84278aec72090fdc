"""The host side of a pc-dimm's backend: QEMU's prealloc threads, the
memdev QEMU reports, the hugepage pools and the backend file, checked
after a plug and an unplug (:mod:`harness.host.checks`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.devices.pc_dimm.model import PlacedDimm
from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import HarnessError
from harness.host.checks import (
    HostView,
    TouchPagesSampler,
    check_file,
    check_memdev,
    check_plug,
    check_unplug,
)
from harness.retry import wait_for
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext


def prealloc_threads(op: AddDimm, sampler: object, lat: dict[str, float], vcpus: int
                     ) -> list[Mismatch]:
    """QEMU's prealloc threads seen vs its rule (more than the rule is a finding)."""
    if not isinstance(sampler, TouchPagesSampler):
        return []
    rule = op.backend.prealloc_threads_used(op.size, os.cpu_count() or 1, vcpus)
    lat["prealloc_threads_seen"] = sampler.peak
    lat["prealloc_threads_rule"] = rule
    if sampler.peak > rule:
        return [Mismatch("prealloc threads (touch_pages)", op.id, rule, sampler.peak, "host")]
    return []


def backend_file(ctx: StepContext, dimm_id: str) -> Path | None:
    dev = ctx.vm.memory_devices.get(dimm_id)
    path = dict(dev.backend.props).get("mem-path") if dev is not None else None
    return Path(path) if path else None


def after_plug(ctx: StepContext, d: PlacedDimm, before: HostView | None) -> list[Mismatch]:
    """The host side of a plugged non-RAM backend."""
    dev = ctx.vm.memory_devices[d.id]
    out = check_memdev(ctx.vm.execute("query-memdev", phase="observe"), dev.backend.id,
                       d.backend, d.size, d.id)
    if before is not None:
        out += check_plug(before, HostView.read(), d.backend, d.hugepages, d.id)
    out += check_file(backend_file(ctx, d.id), d.backend, plugged=True, subject=d.id)
    return out


def after_unplug(ctx: StepContext, d: PlacedDimm, plugged: HostView | None,
                 path: Path | None, in_file: int | None) -> list[Mismatch]:
    """The host got the backend's memory back (pools, file) once QEMU freed it."""
    t1 = time.monotonic()
    found = _settled(lambda: ([] if plugged is None else check_unplug(
        plugged, HostView.read(), d.backend, d.hugepages, d.id, in_file))
        + check_file(path, d.backend, plugged=False, subject=d.id))
    if plugged is not None:
        ctx.lat["host_release_s"] = time.monotonic() - t1
    return found


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
