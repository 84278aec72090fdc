"""The virtio-mem model, pure: QEMU's placement and refusals
(harness.devices.virtio_mem.rules via predict) and the guest driver's blocks
(harness.devices.virtio_mem.driver).  The expected addresses, words and
blocks were read off the real QEMU 7.2.x / 10.0.2 and the 6.1 guest (the
scenario tests in tests/scenarios/test_virtio_mem.py check them live)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_kernel_model import SEED_ZONES  # the seed guest's boot zones

from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.virtio_mem.driver import (
    UnmodelledDriver,
    VirtioMemDriver,
    rules_for,
)
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.devices.virtio_mem.rules import VMEM_CHANGES, vmem_rules_for
from harness.errors import PlanRefused, UsageError
from harness.model.kernel import KernelMemory, KernelPolicy
from harness.model.predict import predict
from harness.model.qemu_rules import NEWEST_READ
from harness.model.spec import MachineSpec, RemoveDevice

MiB, GiB = 1 << 20, 1 << 30
BLOCK = 128 * MiB
SEED = MachineSpec()  # pc, 6G over 3G+3G, slots=32, maxmem=32G; QEMU 7.2
SEED10 = MachineSpec(qemu_version=(10, 0))
# The machine of the placement probe: -m 2G,slots=4,maxmem=12G, nodes 1G+1G.
SMALL = dict(ram_size=2 * GiB, slots=4, maxmem=12 * GiB, numa=(GiB, GiB))


def words(spec: MachineSpec, ops: list) -> str:
    with pytest.raises(PlanRefused) as exc:
        predict(spec, ops)
    return exc.value.qemu_message  # type: ignore[attr-defined]


# -- QEMU: placement -----------------------------------------------------------

@pytest.mark.parametrize("qemu", [(7, 2), (10, 0)])
def test_first_fit_aligns_to_the_block_size(qemu: tuple[int, int]) -> None:
    """Seen on both binaries: a 130M region ends off 4M; the next device with
    4M blocks starts at the next 4M, one with 8M blocks at the next 8M."""
    spec = MachineSpec(qemu_version=qemu, **SMALL)  # type: ignore[arg-type]
    ops = [AddVirtioMem("vm1", 130 * MiB), AddVirtioMem("vm2", GiB, block_size=4 * MiB),
           AddVirtioMem("vm3", GiB + 8 * MiB, block_size=8 * MiB), AddVirtioMem("vui", GiB)]
    final = predict(spec, ops).final
    assert [(v.id, hex(v.addr)) for v in final.of("virtio-mem")] == [
        ("vm1", "0x100000000"), ("vm2", "0x108400000"), ("vm3", "0x148800000"),
        ("vui", "0x189000000")]
    assert final.of("virtio-mem")[0].block_size == 2 * MiB  # virtio_mem_default_block_size()


def test_dimms_and_virtio_mem_share_the_area() -> None:
    """Seen on 10.0: a 512M DIMM at 7G, then a 4G virtio-mem right after it;
    a DIMM added later skips the virtio-mem's whole region."""
    ops = [AddDimm("dimm0", 512 * MiB), AddVirtioMem("vmem0", 4 * GiB, 1, 2 * GiB),
           AddDimm("dimm1", GiB, 1)]
    final = predict(SEED10, ops).final
    by_id = {d.id: d.addr for d in [*final.of("pc-dimm"), *final.of("virtio-mem")]}
    assert by_id == {"dimm0": 0x1c0000000, "vmem0": 0x1e0000000,
                     "dimm1": 0x1e0000000 + 4 * GiB}
    assert [d.slot for d in final.of("pc-dimm")] == [0, 1]  # virtio-mem takes no slot


def test_pc_dimm_placement_is_unchanged_without_virtio_mem() -> None:
    final = predict(SEED, [AddDimm("d0", GiB, 1), AddDimm("d1", 512 * MiB)]).final
    assert [(d.addr, d.blocks[0]) for d in final.of("pc-dimm")] == [(0x1c0000000, 56),
                                                            (0x200000000, 64)]
    assert final.of("virtio-mem") == ()


# -- QEMU: refusals, with QEMU's words ---------------------------------------------

@pytest.mark.parametrize("qemu", [(7, 2), (10, 0)])
@pytest.mark.parametrize("op, said", [
    (AddVirtioMem("v", GiB, requested=MiB),
     "'requested-size' property has to be multiples of 'block-size' (0x200000)"),
    (AddVirtioMem("v", GiB, block_size=4096),
     "'block-size' property has to be at least 0x100000"),
    (AddVirtioMem("v", GiB, block_size=3 * MiB), "'block-size' property has to be a power of two"),
    (AddVirtioMem("v", GiB, node=5),
     "'node' property has value '5', which exceedsthe number of numa nodes: 2"),
    (AddVirtioMem("v", GiB, addr=0x1c0000000 + MiB), "address must be aligned to 0x200000 bytes"),
    (AddVirtioMem("v", 27 * GiB),
     "not enough space, currently 0x0 in use of total space for memory devices 0x680000000"),
])
def test_add_refusals(qemu: tuple[int, int], op: AddVirtioMem, said: str) -> None:
    assert words(MachineSpec(qemu_version=qemu), [op]) == said


def test_q35_root_bus_takes_no_hotplugged_virtio_mem() -> None:
    q35 = MachineSpec(machine="q35", qemu_version=(10, 0))
    assert words(q35, [AddDimm("x", GiB), AddVirtioMem("x", GiB)]) == (
        "Bus 'pcie.0' does not support hotplugging")  # before the duplicate id


def test_node_is_checked_before_the_block_size_multiple() -> None:
    op = AddVirtioMem("v", GiB, node=7, requested=MiB)
    assert "exceedsthe number of numa nodes: 2" in words(SEED, [op])


def test_backend_size_not_a_block_multiple_differs_by_version() -> None:
    op = AddVirtioMem("v", GiB + 2 * MiB, block_size=4 * MiB)
    assert words(SEED, [op]) == "backend memory size must be multiple of 0x400000"
    assert words(SEED10, [op]) == ("'memdev' property memdev size has to be multiples "
                                   "of'block-size' (0x400000)")


def test_shared_id_space_and_maxmem_room() -> None:
    assert words(SEED, [AddDimm("x", GiB), AddVirtioMem("x", GiB)]) == "Duplicate device ID 'x'"
    assert words(SEED, [AddVirtioMem("x", GiB), AddDimm("x", GiB)]) == "Duplicate device ID 'x'"
    # the virtio-mem's whole region counts, however little is requested
    said = words(SEED, [AddVirtioMem("v", 20 * GiB), AddDimm("d", 7 * GiB)])
    assert said == ("not enough space, currently 0x500000000 in use of total space for "
                    "memory devices 0x680000000")


def test_explicit_memaddr_conflicts_with_a_dimm() -> None:
    ops = [AddDimm("d", GiB), AddVirtioMem("v", GiB, addr=0x1c0000000 + 512 * MiB)]
    assert words(SEED, ops) == "address range conflicts with memory device id='d'"
    ok = predict(SEED, [AddDimm("d", GiB), AddVirtioMem("v", GiB, addr=0x240000000)])
    assert ok.final.of("virtio-mem")[0].addr == 0x240000000


def test_resize_refusals() -> None:
    add = AddVirtioMem("v", GiB, block_size=4 * MiB)
    assert words(SEED, [add, ResizeVirtioMem("v", 2 * GiB)]) == (
        "'requested-size' cannot exceed the memory backend size(0x40000000)")
    # the multiple is checked first (seen with 2G+1M on both binaries)
    assert words(SEED, [add, ResizeVirtioMem("v", 2 * GiB + MiB)]) == (
        "'requested-size' has to be multiples of 'block-size' (0x400000)")
    assert words(SEED, [ResizeVirtioMem("nope", 0)]) == "Device 'nope' not found"
    grown = predict(SEED, [add, ResizeVirtioMem("v", GiB)]).final.of("virtio-mem")[0]
    assert grown.requested == GiB


def test_device_del_qemu_7_2_never() -> None:
    ops = [AddVirtioMem("v", GiB), RemoveDevice("v")]
    assert words(SEED, ops) == "virtio based memory devices cannot be unplugged."


def test_device_del_qemu_10_when_nothing_is_requested() -> None:
    add = AddVirtioMem("v", GiB, requested=512 * MiB)
    assert words(SEED10, [add, RemoveDevice("v")]) == (
        "virtio-mem device cannot get unplugged while some of its memory is still plugged")
    done = predict(SEED10, [add, ResizeVirtioMem("v", 0), RemoveDevice("v")])
    assert done.final.of("virtio-mem") == ()
    off = AddVirtioMem("v", GiB, unplugged_inaccessible=False)
    assert words(SEED10, [off, RemoveDevice("v")]) == (
        "virtio-mem device cannot get unplugged while 'unplugged-inaccessible' != 'on'")
    old = MachineSpec(qemu_version=(10, 0), machine_version=(7, 0))
    assert "'unplugged-inaccessible' != 'on'" in words(old, [AddVirtioMem("v", GiB),
                                                             RemoveDevice("v")])


def test_dynamic_memslots_needs_qemu_8_2() -> None:
    op = AddVirtioMem("v", GiB, dynamic_memslots=True)
    assert words(SEED, [op]) == "Property 'virtio-mem-pci.dynamic-memslots' not found"
    assert predict(SEED10, [op]).final.of("virtio-mem")[0].id == "v"


def test_inputs_memhp_refuses() -> None:
    with pytest.raises(UsageError, match="not modelled"):
        predict(SEED, [AddVirtioMem("v", GiB, requested=2 * GiB)])  # QEMU accepts it
    with pytest.raises(UsageError, match="older than any"):
        MachineSpec(qemu_version=(7, 1))


def test_virtio_mem_rules_in_force_for_every_version() -> None:
    """Each release 7.2 .. 11.1 gets, per rule, the last change at or before
    it (the table's definition); newer ones the newest, flagged."""
    releases = [(a, b) for a in range(7, NEWEST_READ[0] + 1) for b in range(3)
                if (7, 2) <= (a, b) <= NEWEST_READ]
    for version in releases:
        rules = vmem_rules_for(version)
        assert rules.extrapolated_from is None
        for field in {c.field for c in VMEM_CHANGES}:
            last = max((c for c in VMEM_CHANGES if c.field == field and c.since <= version),
                       key=lambda c: c.since)
            assert getattr(rules, field) == last.value, (version, field)
    assert vmem_rules_for((8, 0)).unplug == "never"
    assert vmem_rules_for((8, 1)).unplug == "when-empty"
    assert not vmem_rules_for((8, 1)).dynamic_memslots
    assert vmem_rules_for((8, 2)).dynamic_memslots
    newer = vmem_rules_for((NEWEST_READ[0] + 1, 0))
    assert newer.extrapolated_from == NEWEST_READ
    assert replace(newer, qemu=NEWEST_READ, extrapolated_from=None) == \
        vmem_rules_for(NEWEST_READ)
    # 8.2 runs virtio-mem now (it was refused): placed like 10.0
    assert predict(MachineSpec(qemu_version=(8, 2)),
                   [AddVirtioMem("v", GiB)]).final.of("virtio-mem")
    with pytest.raises(UsageError, match="requested size"):
        ResizeVirtioMem("v", -1)


# -- the guest driver ------------------------------------------------------------------

def kernel(auto: str = "offline", release: str = "6.1.0-56-cloud-amd64") -> KernelMemory:
    return KernelMemory(KernelPolicy(release=release, auto_online_blocks=auto,  # type: ignore
                                     zones=SEED_ZONES), BLOCK)


def driver(addr: int = 0x1c0000000, size: int = 4 * GiB, bs: int = 2 * MiB) -> VirtioMemDriver:
    return VirtioMemDriver("vmem0", addr, size, bs, 1, BLOCK)


def view(km: KernelMemory) -> list[tuple[int, str, str | None, int]]:
    return [(b.number, b.state, b.zone, km.managed_bytes(b.number)) for b in km.block_view()]


def test_movable_grow_and_shrink_block_by_block() -> None:
    """6.1 + memhp_default_state=online_movable on QEMU 7.2, as seen: 1G is
    blocks 56-63, 3G 56-79, 3G+2M adds block 80 with 2 MiB in MemTotal."""
    km, d = kernel("online_movable"), driver()
    assert d.resize(km, GiB) == GiB
    assert [n for n, *_ in view(km)] == list(range(56, 64))
    assert d.resize(km, 3 * GiB) == 3 * GiB and d.blocks() == tuple(range(56, 80))
    assert d.resize(km, 3 * GiB + 2 * MiB) == 3 * GiB + 2 * MiB
    assert view(km)[-1] == (80, "online", "Movable", 2 * MiB)
    assert sum(km.managed_bytes(n) for n in km.blocks) == 3 * GiB + 2 * MiB
    # the partial block goes first, then whole blocks from the top, then
    # sub-blocks from the end of the last block left
    assert d.resize(km, GiB + 2 * MiB) == GiB + 2 * MiB
    assert d.blocks() == tuple(range(56, 65))
    assert view(km)[-1] == (64, "online", "Movable", 2 * MiB)
    assert not d.uncertain
    assert d.resize(km, 0) == 0 and km.blocks == {}


def test_offline_threshold_limits_what_an_offline_guest_gets() -> None:
    """6.1 without memhp_default_state: blocks stay offline, and the driver
    stops at offline_threshold (1 GiB = 8 blocks) whatever was requested."""
    km, d = kernel(), driver(addr=0x1e0000000)
    assert d.resize(km, 2 * GiB) == GiB
    assert view(km) == [(n, "offline", None, BLOCK) for n in range(60, 68)]
    assert d.resize(km, 3 * GiB) == GiB  # still nothing onlines them
    assert d.resize(km, 256 * MiB + 4 * MiB) == 256 * MiB + 4 * MiB
    assert d.blocks() == (60, 61, 62)
    assert d.resize(km, 0) == 0 and km.blocks == {}


def test_shrink_prefers_offline_then_movable_partial() -> None:
    km, d = kernel("online_movable"), driver()
    d.resize(km, GiB + 64 * MiB)  # 8 full blocks + half of block 64
    assert d.resize(km, GiB + 60 * MiB) == GiB + 60 * MiB
    assert d.blocks() == tuple(range(56, 65))  # sub-blocks left the partial block


def test_kernel_zone_unplug_is_not_determined() -> None:
    km, d = kernel("online_kernel"), driver()
    d.resize(km, GiB)
    assert {b.zone for b in km.block_view()} == {"Normal"}
    d.resize(km, 0)
    assert d.uncertain  # alloc_contig_range() in ZONE_NORMAL may fail: EBUSY
    assert sum(d.may_stay.values()) * d.sb_size == GiB


def _grown(auto: str, size: int) -> tuple[KernelMemory, VirtioMemDriver, tuple[int, ...]]:
    km, d = kernel(auto, release="7.3.4+deb13-amd64"), driver()
    d.resize(km, size)
    return km, d, d.blocks()


def test_busy_kernel_zone_sub_blocks_are_a_legitimate_outcome() -> None:
    """7.3 auto-onlining into ZONE_NORMAL, 3 GiB shrunk to 0, as seen: 12 MiB
    stays plugged in one block.  The model takes that outcome (its blocks and
    MemTotal follow); the exact outcome is accepted as well."""
    km, d, grown = _grown("online", 3 * GiB)
    assert d.resize(km, 0) == 0 and d.uncertain
    kept = grown[0]  # a block the driver unplugged from ZONE_NORMAL
    assert d.accept(km, 12 * MiB, {kept}) is None
    assert d.plugged_size == 12 * MiB and d.blocks() == (kept,)
    assert d.busy_bytes == 12 * MiB
    assert km.managed_bytes(kept) == 12 * MiB and km.blocks[kept].zone == "Normal"
    # The exact outcome needs nothing accepted.
    km, d, _ = _grown("online", 3 * GiB)
    d.resize(km, 0)
    assert d.accept(km, 0, set()) is None and d.blocks() == ()


def test_outcomes_busy_memory_cannot_explain_are_refused() -> None:
    km, d, grown = _grown("online", 3 * GiB)
    d.resize(km, GiB)
    exact = (d.plugged_size, d.blocks())
    never_had = max(grown) + 1
    assert d.accept(km, GiB + 2 * MiB, {*exact[1], never_had}) is not None  # a new block
    assert d.accept(km, GiB + MiB, set(exact[1])) is not None  # half a sub-block
    assert d.accept(km, 3 * GiB + 2 * MiB, set(grown)) is not None  # more than was plugged
    assert (d.plugged_size, d.blocks()) == exact  # refused: the prediction stays
    # ZONE_MOVABLE: fake-offlining is reliable, nothing may stay.
    km, d, grown = _grown("online_movable", 3 * GiB)
    d.resize(km, 0)
    assert not d.uncertain
    assert d.accept(km, 12 * MiB, {grown[0]}) is not None


def test_unaligned_device_uses_whole_memory_blocks_only() -> None:
    d = driver(addr=0x1c0000000 + 130 * MiB, size=GiB)
    # [7G+130M, 8G+130M): blocks 57 and 65 are cut, 58..64 whole
    assert d.first_mb == 58 and d.last_mb == 64
    km = kernel("online_movable")
    assert d.resize(km, GiB) == 7 * BLOCK  # only 7 whole blocks fit
    assert d.blocks() == tuple(range(58, 65))


def test_reuses_removed_blocks_lowest_first() -> None:
    km, d = kernel("online_movable"), driver()
    d.resize(km, 2 * GiB)
    d.resize(km, 0)
    d.resize(km, 256 * MiB)
    assert d.blocks() == (56, 57)


def test_big_block_mode_is_not_modelled_and_every_kernel_gets_rules() -> None:
    with pytest.raises(UnmodelledDriver, match="Big Block Mode"):
        driver(bs=128 * MiB)
    assert rules_for((6, 12)).unplug_online
    for within in [(6, 1), (6, 12), (7, 2), (7, 3)]:
        assert rules_for(within).extrapolated_from is None
    assert rules_for((7, 4)).extrapolated_from == (7, 3)
    assert rules_for((8, 0)).extrapolated_from == (7, 3)
    assert rules_for((5, 15)).extrapolated_from == (6, 1)
    assert rules_for((8, 0)).name == rules_for((7, 3)).name
    # 4 MiB device blocks: 4 MiB sub-blocks, 32 per Linux block
    assert driver(bs=4 * MiB).sbs_per_mb == 32


# -- the comparison (harness.verify) ------------------------------------------------------

def test_compare_qemu_names_each_virtio_mem_field() -> None:
    from types import SimpleNamespace

    from harness.devices.virtio_mem.model import MODEL
    from harness.devices.virtio_mem.qemu import ExpectedVirtioMem
    from harness.verify import compare_records

    want = ExpectedVirtioMem("vmem0", 0x1c0000000, 4 * GiB, 2 * MiB, 1, 3 * GiB, GiB)
    seen = SimpleNamespace(id="vmem0", addr=0x1c0000000, max_size=4 * GiB,
                           block_size=2 * MiB, node=1, requested_size=3 * GiB, size=GiB)
    assert compare_records([want], [seen], MODEL.compared) == []
    seen.size, seen.addr = 3 * GiB, 0x1e0000000
    got = {(m.what, m.expected, m.observed) for m in compare_records(
        [want], [seen], MODEL.compared)}
    assert got == {("addr", "0x1c0000000", "0x1e0000000"), ("size", GiB, 3 * GiB)}
    gone = compare_records([want], [], MODEL.compared)
    assert [(m.what, m.subject, m.expected, m.observed) for m in gone] == [
        ("present", "vmem0", True, False)]


def test_device_record_gives_qmp_args_and_command_line() -> None:
    """One record, both forms (hot-add and cold-plug/migration destination);
    properties left None are not passed, so QEMU's defaults apply."""
    from harness.qemu.devices import ram_backend, virtio_mem

    dev = virtio_mem("vmem0", ram_backend(4 * GiB, "be0"), 1, GiB)
    assert dev.device.qmp_args() == {"driver": "virtio-mem-pci", "id": "vmem0",
                                     "memdev": "be0", "node": 1, "requested-size": GiB}
    full = virtio_mem("vmem1", ram_backend(GiB, "be1"), 0, block_size=4 * MiB,
                      memaddr=0x240000000, unplugged_inaccessible=False, dynamic_memslots=True)
    assert full.cli() == [
        "-object", "memory-backend-ram,id=be1,size=1073741824",
        "-device", "virtio-mem-pci,id=vmem1,memdev=be1,node=0,requested-size=0,"
                   "block-size=4194304,memaddr=9663676416,unplugged-inaccessible=off,"
                   "dynamic-memslots=on"]


def test_iomem_shows_the_drivers_region_and_added_memory() -> None:
    """/proc/iomem of the 6.1 guest with 258M plugged in a 4G virtio-mem at
    7.5G (two whole blocks and a partial one: three blocks, one merged range)."""
    from harness.guest.iomem import merged_ranges, parse_iomem

    text = ("100000000-1bfffffff : System RAM\n"
            "1c0000000-1dfffffff : System RAM\n"
            "1e0000000-2dfffffff : virtio1\n"
            "  1e0000000-1f7ffffff : System RAM (virtio_mem)\n"
            "1040000000-10bfffffff : PCI Bus 0000:00\n"
            "  1040000000-1040003fff : 0000:00:03.0\n")
    regions = parse_iomem(text)
    assert list(regions) == [0x1e0000000]
    r = regions[0x1e0000000]
    assert (r.name, r.end - r.start, r.added) == ("virtio1", 4 * GiB,
                                                  [(0x1e0000000, 0x1f8000000)])
    km, d = kernel("online_movable"), driver(addr=0x1e0000000)
    d.resize(km, 258 * MiB)
    assert merged_ranges(d.blocks(), BLOCK) == r.added
    assert merged_ranges((60, 61, 63), BLOCK) == [(60 * BLOCK, 62 * BLOCK),
                                                  (63 * BLOCK, 64 * BLOCK)]


def test_unmodelled_driver_fails_each_step_with_its_reason_not_a_keyerror() -> None:
    """Big Block Mode (a device block of a whole memory block): the add step
    fails with the reason, and so does every later step of that device."""
    from types import SimpleNamespace

    from harness.devices.virtio_mem.live import KindState, known_driver
    from harness.errors import VMError

    km = kernel("online", release="7.2.13+deb14-amd64")
    bbm = SimpleNamespace(id="vmem0", addr=0x1c0000000, size=4 * GiB, block_size=BLOCK,
                          node=1)
    # a fake step context (the narrow one acts get): the run state's kernel
    # model and devices, and the kind's own state
    kind_state = KindState()
    state = SimpleNamespace(km=lambda: km, current=lambda kind: (bbm,), block_size=BLOCK)
    ctx = SimpleNamespace(state=state, kind_state=lambda kind: kind_state)
    for _ in range(2):
        with pytest.raises(VMError, match="Big Block Mode"):
            known_driver(ctx, "vmem0")  # type: ignore[arg-type]
    # A modelled device is made once and kept.
    sbm = SimpleNamespace(**{**vars(bbm), "block_size": 2 * MiB})
    state.current = lambda kind: (sbm,)
    first = known_driver(ctx, "vmem0")  # type: ignore[arg-type]
    assert known_driver(ctx, "vmem0") is first  # type: ignore[arg-type]
