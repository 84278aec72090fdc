"""Unit and property tests of the reference model.

Expected values are computed here from the cited rules (never copied from
the model's output): e.g. the pc device region starts at
ROUND_UP(4G + above_4g, 1G) (hw/i386/pc.c) and block N = addr // block size.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import PlanRefused, UsageError
from harness.model import (
    AddDimm,
    MachineSpec,
    RemoveDimm,
    default_block_size,
    expected_zone,
    parse_dimm_option,
    parse_memory_option,
    parse_numa_option,
    predict,
    ram_split,
)
from harness.units import GiB, MiB

BS = 128 * MiB  # MIN_MEMORY_BLOCK_SIZE, arch/x86/mm/init_64.c


def round_up(v: int, a: int) -> int:
    return -(-v // a) * a


SEED = MachineSpec(machine="pc", ram_size=6 * GiB, slots=32, maxmem=32 * GiB,
                   numa=(3 * GiB, 3 * GiB))


def test_seed_dimm_lands_where_the_pc_rules_put_it() -> None:
    """pc, 6G: split at 3G (gigabyte_align) -> above 3G -> base ROUND_UP(7G, 1G)."""
    below, above, _ = ram_split(SEED)
    assert (below, above) == (3 * GiB, 3 * GiB)
    base = round_up(4 * GiB + above, GiB)
    dimm = predict(SEED, [AddDimm("dimm0", GiB, 1)]).final.dimms[0]
    assert dimm.addr == base
    assert dimm.blocks == tuple(range(base // BS, (base + GiB) // BS))
    assert dimm.node == 1 and dimm.slot == 0 and dimm.guest_accepts


def test_q35_same_options_land_elsewhere_and_say_why() -> None:
    """q35 puts only 2G below 4G when RAM >= 2.75G, so the region starts 1G higher."""
    q35 = MachineSpec(machine="q35", ram_size=6 * GiB, slots=32, maxmem=32 * GiB,
                      numa=(3 * GiB, 3 * GiB))
    below, above, _ = ram_split(q35)
    assert (below, above) == (2 * GiB, 4 * GiB)
    p_q35 = predict(q35, [AddDimm("dimm0", GiB, 1)])
    p_pc = predict(SEED, [AddDimm("dimm0", GiB, 1)])
    assert p_q35.final.dimms[0].addr == round_up(4 * GiB + above, GiB)
    assert p_q35.final.dimms[0].blocks[0] != p_pc.final.dimms[0].blocks[0]
    assert "q35" in p_q35.layout.why and "2G" in p_q35.layout.why


@pytest.mark.parametrize(
    ("machine", "ram", "below"),
    [("pc", 2 * GiB, 2 * GiB), ("pc", 0xE0000000 - MiB, 0xE0000000 - MiB),
     ("pc", 0xE0000000, 0xC0000000), ("pc", 8 * GiB, 0xC0000000),
     ("q35", 2 * GiB, 2 * GiB), ("q35", 0xB0000000 - MiB, 0xB0000000 - MiB),
     ("q35", 0xB0000000, 0x80000000), ("q35", 8 * GiB, 0x80000000)],
)
def test_ram_split_thresholds(machine: str, ram: int, below: int) -> None:
    b, a, _ = ram_split(MachineSpec(machine=machine, ram_size=ram, slots=0, maxmem=0, numa=()))
    assert (b, a) == (below, ram - below)


def test_device_region_size_adds_a_gib_per_slot() -> None:
    lay = predict(SEED, []).layout
    assert lay.device_size == (32 - 6) * GiB + 32 * GiB  # maxmem - mem + 1G * slots


def test_block_size_rule() -> None:
    assert default_block_size(7 * GiB) == BS
    assert default_block_size(64 * GiB) == 2 * GiB  # aligned to 2G
    assert default_block_size(64 * GiB + 256 * MiB) == 256 * MiB
    assert default_block_size(65 * GiB, hypervisor=False) == 2 * GiB


def test_first_fit_is_2mib_aligned_so_an_odd_dimm_shifts_the_next() -> None:
    odd, nxt = predict(SEED, [AddDimm("a", 130 * MiB, 0), AddDimm("b", 128 * MiB, 1)]).final.dimms
    assert not odd.guest_accepts and "size" in (odd.reason or "")
    assert nxt.addr == round_up(odd.addr + odd.size, 2 * MiB)
    assert nxt.addr % BS != 0 and not nxt.guest_accepts and "address" in (nxt.reason or "")
    fixed = round_up(nxt.addr + nxt.size, BS)
    ok = predict(SEED, [AddDimm("a", 130 * MiB, 0), AddDimm("b", 128 * MiB, 1),
                        AddDimm("c", 128 * MiB, 1, fixed)]).final.dimms[2]
    assert ok.guest_accepts and ok.blocks == (fixed // BS,)


def test_removed_dimm_frees_its_slot_and_range() -> None:
    p = predict(SEED, [AddDimm("a", GiB, 0), AddDimm("b", GiB, 1), RemoveDimm("a"),
                       AddDimm("c", 512 * MiB, 0)])
    by_id = {d.id: d for d in p.final.dimms}
    assert by_id["c"].slot == 0 and by_id["c"].addr == p.layout.device_base


def test_node_totals() -> None:
    p = predict(SEED, [AddDimm("a", GiB, 1), AddDimm("b", 130 * MiB, 0)])
    nodes = {n.node: n for n in p.final.nodes}
    assert nodes[1].bytes_after == 3 * GiB + GiB
    assert nodes[0].bytes_after == 3 * GiB  # the guest rejects b


@pytest.mark.parametrize(
    ("spec", "ops", "kind"),
    [
        (MachineSpec(slots=0, maxmem=0, ram_size=2 * GiB, numa=()),
         [AddDimm("a", GiB)], "hotplug-disabled"),
        (MachineSpec(slots=1, maxmem=8 * GiB), [AddDimm("a", GiB), AddDimm("b", GiB)],
         "slots-exhausted"),
        (MachineSpec(slots=4, maxmem=7 * GiB), [AddDimm("a", GiB), AddDimm("b", GiB)],
         "maxmem-exceeded"),
        (SEED, [AddDimm("a", 129 * MiB)], "misaligned-size"),
        (SEED, [AddDimm("a", GiB, 0, 7 * GiB + MiB)], "misaligned-addr"),
        (SEED, [AddDimm("a", GiB, 0, GiB)], "addr-outside-region"),
        (SEED, [AddDimm("a", GiB), AddDimm("b", GiB, 0, 7 * GiB + 512 * MiB)], "addr-conflict"),
        (SEED, [AddDimm("a", GiB), AddDimm("a", GiB)], "duplicate-id"),
        (SEED, [AddDimm("a", GiB, 2)], "unknown-node"),
        (SEED, [RemoveDimm("a")], "unknown-dimm"),
        (MachineSpec(numa=(GiB, GiB)), [], "numa-mismatch"),
    ],
)
def test_refusals_name_kind_step_and_qemu_words(spec, ops, kind: str) -> None:
    with pytest.raises(PlanRefused) as info:
        predict(spec, ops)
    assert info.value.kind == kind
    assert info.value.exit_code == 2
    assert getattr(info.value, "step", len(ops) - 1) in (len(ops) - 1, None, 0)
    assert "fix:" in str(info.value)


def test_expected_zone() -> None:
    assert expected_zone("online_movable") == "Movable"
    assert expected_zone("online_kernel") == "Normal"
    assert expected_zone("online") == "Normal"


@pytest.mark.parametrize("text", ["", "6G,slots=x,maxmem=8G", "6G,slots=4", "6G,maxmem=4G,slots=2",
                                  "6G,foo=1", "1.5G", "6G,slots=300,maxmem=400G"])
def test_bad_memory_options(text: str) -> None:
    with pytest.raises(UsageError):
        parse_memory_option(text)


@pytest.mark.parametrize("text", ["", ":1G@0", "d 0:1G@0", "d0:1G@-1", "d0:1G@x", "d;rm:1G",
                                  "$(id):1G", "'a':1G", "d0:0@0", "d0:1G@0:zz", "d0"])
def test_bad_dimm_options_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_dimm_option(text)


def test_dimm_option_syntax() -> None:
    assert parse_dimm_option("dimm0:1G@1") == AddDimm("dimm0", GiB, 1)
    assert parse_dimm_option("x:512M") == AddDimm("x", 512 * MiB, 0)
    assert parse_dimm_option("x:512M@0:0x1c0000000") == AddDimm("x", 512 * MiB, 0, 7 * GiB)
    assert parse_numa_option("3G,3G") == (3 * GiB, 3 * GiB)


@given(st.text(max_size=40))
def test_dimm_parser_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(UsageError):
        parse_dimm_option(text)


sizes = st.sampled_from([128 * MiB, 256 * MiB, 130 * MiB, 512 * MiB, GiB, 2 * GiB, 2 * MiB])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(sizes, st.integers(0, 1), st.booleans()), max_size=12))
def test_invariants(plan: list[tuple[int, int, bool]]) -> None:
    """DIMMs never overlap, stay in the region, blocks = addr // bs, slots unique,
    totals add up, and removing then re-adding the last DIMM is stable."""
    spec = MachineSpec(slots=8, maxmem=16 * GiB)
    ops: list[AddDimm | RemoveDimm] = []
    for i, (size, node, _) in enumerate(plan):
        ops.append(AddDimm(f"d{i}", size, node))
        try:
            predict(spec, ops)
        except PlanRefused:
            ops.pop()
    p = predict(spec, ops)
    dimms = sorted(p.final.dimms, key=lambda d: d.addr)
    lay = p.layout
    for a, b in zip(dimms, dimms[1:], strict=False):
        assert a.addr + a.size <= b.addr
    for d in dimms:
        assert lay.device_base <= d.addr and d.addr + d.size <= lay.device_end
        if d.guest_accepts:
            assert d.blocks == tuple(range(d.addr // lay.block_size,
                                           (d.addr + d.size) // lay.block_size))
        else:
            assert d.blocks == ()
    assert len({d.slot for d in dimms}) == len(dimms)
    for n in p.final.nodes:
        assert n.bytes_after == n.boot_bytes + sum(
            d.size for d in dimms if d.node == n.node and d.guest_accepts)
    if ops:
        last = ops[-1]
        assert isinstance(last, AddDimm)
        again = predict(spec, [*ops, RemoveDimm(last.id), last])
        assert again.final.dimms == p.final.dimms
