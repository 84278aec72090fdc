"""memfd, file and 2 MiB-hugepage DIMMs on the default guest, host side checked.

One VM takes five DIMMs over different backends; each is hot-added,
onlined and removed, and every step is checked by the Runner against the
model (address from the backend's own alignment, blocks, zones, node
totals) and, for the backend, on the host (harness.host.checks, run by the
add/remove steps): ``query-memdev`` agrees with the request, HugePages
Free/Rsvd move by exactly each DIMM's pages on plug and come back on
unplug (except what a shared file keeps: everything without discard-data,
the reservations of untouched pages with it), with
prealloc on host node 0 the node's free pages move too, and the backend
files exist while plugged and are emptied by discard-data.
"""

from __future__ import annotations

import os

import pytest

from harness.scenario import add, migrate, online, remove
from harness.testing import assert_passed, run_steps

pytestmark = [pytest.mark.vm]

DIMMS = [
    add("m0:256M@0", backend="memfd"),
    add("f0:256M@1", backend="file", share=True, discard_data=True),
    add("h0:256M@1", backend="memfd", hugepages="2M", prealloc=True, prealloc_threads=2,
        host_nodes="0", policy="bind"),
    add("h1:128M@0", backend="file", hugepages="2M", share=True),
    add("h2:128M@1", backend="file", hugepages="2M", share=True, discard_data=True),
]


@pytest.mark.memhp_hugepages(**{"2M": 256})
def test_backends_plug_online_remove(memhp_hugepages, memhp_vm, request) -> None:
    memhp_vm.hugetlbfs = dict(memhp_hugepages.mounts)
    steps = []
    for step in DIMMS:
        steps += [step, online(step.op.id, "online_movable")]
    steps += [remove(step.op.id) for step in DIMMS]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    h0 = results[4].latencies  # add h0: prealloc with 2 threads
    # QEMU's rule (min(CPUs, 16, 2 threads, ...)); more seen would be a mismatch above
    assert h0["prealloc_threads_rule"] == min(2, os.cpu_count() or 1) if \
        (os.cpu_count() or 1) > 1 else 0
    print(f"h0 prealloc: {h0['prealloc_threads_seen']:.0f} touch_pages threads seen "
          f"(rule {h0['prealloc_threads_rule']:.0f}), device_add {h0['device_add_s']:.3f} s")
    # every hugepage backend took its pages (each move was compared with
    # the model by the add/remove steps' host checks)
    assert sum(s.op.backend.pages(s.op.size) for s in DIMMS) == 256


@pytest.mark.memhp_hugepages(**{"1G": 1})
def test_gib_page_dimm_moves_to_a_gib_boundary(memhp_hugepages, memhp_vm, request) -> None:
    """A 1 GiB-hugepage DIMM after a 128 MiB RAM DIMM starts at the next
    1 GiB boundary (its backend's alignment), not right after it; guest and
    QEMU agree with the model, and the page comes back on unplug."""
    memhp_vm.hugetlbfs = dict(memhp_hugepages.mounts)
    steps = [add("r0:128M@0"), online("r0"),
             add("g0:1G@1", backend="memfd", hugepages="1G"), online("g0"),
             remove("g0"), remove("r0")]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    placed = {d["id"]: d for d in results[2].expected["dimms"]}
    assert placed["g0"]["addr"] % (1 << 30) == 0
    assert placed["g0"]["addr"] > placed["r0"]["addr"] + placed["r0"]["size"]


@pytest.mark.memhp_hugepages(**{"2M": 128})
def test_backends_survive_migration(memhp_hugepages, memhp_vm, request) -> None:
    """A shared plain file and a 2 MiB-hugepage memfd DIMM, migrated to a new
    QEMU (which maps its own copies: twice the pages reserved), then removed
    there with the host checks: the file still exists at its path (memhp
    keeps backend files outside the work dir the migration replaces) and
    the destination's hugepages come back."""
    memhp_vm.hugetlbfs = dict(memhp_hugepages.mounts)
    steps = [add("f0:128M@1", backend="file", share=True), online("f0"),
             add("h0:128M@0", backend="memfd", hugepages="2M"), online("h0"),
             migrate(), remove("f0"), remove("h0")]
    assert_passed(run_steps(memhp_vm, steps, request))


@pytest.mark.memhp_cold_boot
def test_cold_plugged_dimms_over_their_own_backends(memhp_vm_factory, request) -> None:
    """Issue 26 (tp-qemu's keys): cold-plugged DIMMs take the backend options
    of a hot-added one (here memfd shared, memfd without merge, RAM
    preallocated); QEMU holds each as asked (query-memdev), the guest adds
    them at boot where the model places them, and a hot-add lands after them."""
    from harness.devices.pc_dimm.ops import AddDimm
    from harness.host.checks import check_memdev
    from harness.model.backend import BackendSpec

    cold = (AddDimm("c0", 256 * 2**20, 0, backend=BackendSpec("memfd", share=True)),
            AddDimm("c1", 128 * 2**20, 1, backend=BackendSpec("memfd", merge=False)),
            AddDimm("c2", 128 * 2**20, 0, backend=BackendSpec("ram", prealloc=True)))
    vm = memhp_vm_factory(memory="4G,slots=4,maxmem=8G", numa="2G,2G", coldplug=cold)
    memdevs = vm.execute("query-memdev", phase="observe")
    for d in cold:
        backend_id = vm.memory_devices[d.id].backend.id
        assert check_memdev(memdevs, backend_id, d.backend, d.size, d.id) == [], d.id
    results = run_steps(vm, [add("d0:128M@1"), online("d0", "online_movable")], request)
    assert_passed(results)
    placed = {x["id"]: x["addr"] for x in results[-1].observed["dimms"]}
    assert placed["d0"] > max(placed[d.id] for d in cold)
