"""Unit and property tests of the reference model.

Expected values are computed here from the cited rules (never copied from
the model's output): e.g. the pc device region starts at
ROUND_UP(4G + above_4g, 1G) (hw/i386/pc.c) and block N = addr // block size.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.devices.pc_dimm.ops import AddDimm, parse_dimm_option
from harness.errors import PlanRefused, UsageError
from harness.model.layout import default_block_size, ram_split
from harness.model.predict import predict
from harness.model.qemu_rules import (
    CHANGES,
    NEWEST_READ,
    OLDEST,
    CpuSpec,
    MachineType,
    oldest_machine_type,
    parse_cpu_option,
    parse_machine_type,
    rules_for,
)
from harness.model.qemu_rules.cpu import host_cpu_from_cpuinfo
from harness.model.qemu_rules.host import parse_meminfo
from harness.model.spec import MachineSpec, RemoveDevice, parse_memory_option, parse_numa_option
from harness.units import GiB, MiB, TiB

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
    dimm = predict(SEED, [AddDimm("dimm0", GiB, 1)]).final.of("pc-dimm")[0]
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
    assert p_q35.final.of("pc-dimm")[0].addr == round_up(4 * GiB + above, GiB)
    assert p_q35.final.of("pc-dimm")[0].blocks[0] != p_pc.final.of("pc-dimm")[0].blocks[0]
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
    odd, nxt = predict(SEED, [AddDimm("a", 130 * MiB, 0),
                              AddDimm("b", 128 * MiB, 1)]).final.of("pc-dimm")
    assert not odd.guest_accepts and "size" in (odd.reason or "")
    assert nxt.addr == round_up(odd.addr + odd.size, 2 * MiB)
    assert nxt.addr % BS != 0 and not nxt.guest_accepts and "address" in (nxt.reason or "")
    fixed = round_up(nxt.addr + nxt.size, BS)
    ok = predict(SEED, [AddDimm("a", 130 * MiB, 0), AddDimm("b", 128 * MiB, 1),
                        AddDimm("c", 128 * MiB, 1, fixed)]).final.of("pc-dimm")[2]
    assert ok.guest_accepts and ok.blocks == (fixed // BS,)


def test_removed_dimm_frees_its_slot_and_range() -> None:
    p = predict(SEED, [AddDimm("a", GiB, 0), AddDimm("b", GiB, 1), RemoveDevice("a"),
                       AddDimm("c", 512 * MiB, 0)])
    by_id = {d.id: d for d in p.final.of("pc-dimm")}
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
        (SEED, [RemoveDevice("a")], "unknown-dimm"),
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


@pytest.mark.parametrize("text", ["", "6G,slots=x,maxmem=8G", "6G,slots=0", "6G,foo=1", "1.5G",
                                  "6G,slots=\u0663,maxmem=8G"])
def test_bad_memory_options(text: str) -> None:
    with pytest.raises(UsageError):
        parse_memory_option(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", (4 * GiB, 0, 0)),                         # -m 4096 is MiB (vl.c legacy suffix)
    ("4096,slots=2,maxmem=8G", (4 * GiB, 2, 8 * GiB)),
    ("4096M,maxmem=8589934592", (4 * GiB, 0, 8 * GiB)),  # maxmem bare is bytes
    ("6G,slots=4", (6 * GiB, 4, 0)),                   # QEMU's refusal, predicted later
    ("6G,maxmem=4G,slots=2", (6 * GiB, 2, 4 * GiB)),
    ("6G,slots=300,maxmem=400G", (6 * GiB, 300, 400 * GiB)),
    ("2G,slots=0,maxmem=0", (2 * GiB, 0, 0)),            # memhp's "no hotplug"
])
def test_memory_option_follows_qemu_units(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_memory_option(text) == expected


def test_numa_bare_numbers_are_mib_like_numa_node_mem() -> None:
    assert parse_numa_option("2048,2048") == (2 * GiB, 2 * GiB)
    assert parse_numa_option("3G,0") == (3 * GiB, 0)


Q35_NO_NUMA = {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "numa": ()}


@pytest.mark.parametrize(("spec", "kind", "qemu_message"), [
    # hw/core/machine.c machine_set_mem()
    (MachineSpec(ram_size=6 * GiB, slots=2, maxmem=4 * GiB, numa=()), "maxmem-below-ram",
     "invalid value of maxmem: maximum memory size (0x100000000) must be at least the initial "
     "memory size (0x180000000)"),
    (MachineSpec(ram_size=2 * GiB, slots=2, maxmem=2 * GiB, numa=()), "maxmem-equals-ram",
     "invalid value of maxmem: memory slots were specified but maximum memory size "
     "(0x80000000) is equal to the initial memory size (0x80000000)"),
    (MachineSpec(ram_size=2 * GiB, slots=2, maxmem=0, numa=()), "slots-without-maxmem",
     "slots specified but no max-size"),
    # hw/i386/pc.c pc_memory_init()
    (MachineSpec(ram_size=2 * GiB, slots=257, maxmem=4 * GiB, numa=()), "too-many-slots",
     "unsupported amount of memory slots: 257"),
    # AMD (TCG's default CPU), machine type 7.1+: relocated to 1 TiB, then beyond 40 bits
    (MachineSpec(maxmem=988 * GiB, **Q35_NO_NUMA), "phys-bits",
     "Address space limit 0xffffffffff < 0x1ff3fffffff phys-bits too low (40)"),
    (MachineSpec(maxmem=976 * GiB, **Q35_NO_NUMA), "phys-bits",
     "Address space limit 0xffffffffff < 0x1fc3fffffff phys-bits too low (40)"),
    # Intel: no relocation; only the 32 GiB q35 PCI hole beyond the region
    (MachineSpec(maxmem=1000 * GiB, cpu=CpuSpec("Intel", 40), **Q35_NO_NUMA), "phys-bits",
     "Address space limit 0xffffffffff < 0x1033fffffff phys-bits too low (40)"),
])
def test_start_up_refusals_in_qemus_words(spec: MachineSpec, kind: str, qemu_message: str) -> None:
    with pytest.raises(PlanRefused) as info:
        predict(spec, [])
    assert (info.value.kind, info.value.qemu_message) == (kind, qemu_message)


def test_amd_relocation_and_machine_type_7_0() -> None:
    # 976G on q35: ROUND_UP(4G + 976G - 512M + 1G, 1G) + 32G = 1013G > 0xfd00000000
    amd48 = CpuSpec("AMD", 48)
    spec = MachineSpec(maxmem=976 * GiB, cpu=amd48, **Q35_NO_NUMA)
    relocated = predict(spec, [AddDimm("a", GiB)])
    assert relocated.layout.above_4g_start == TiB
    assert relocated.final.of("pc-dimm")[0].addr == TiB
    old = predict(MachineSpec(maxmem=976 * GiB, machine_version=(7, 0), cpu=amd48,
                              **Q35_NO_NUMA), [AddDimm("a", GiB)])
    assert old.layout.above_4g_start == 4 * GiB and old.final.of("pc-dimm")[0].addr == 4 * GiB
    intel = predict(MachineSpec(maxmem=976 * GiB, cpu=CpuSpec("Intel", 48), **Q35_NO_NUMA), [])
    assert intel.layout.above_4g_start == 4 * GiB
    # 970G stays below the hole: ROUND_UP(4G + 970.5G, 1G) + 32G = 1007G
    assert predict(MachineSpec(maxmem=970 * GiB, **Q35_NO_NUMA), []).layout.above_4g_start == \
        4 * GiB
    # pc's 64-bit PCI hole is 2 GiB, q35's 32 GiB
    pc = MachineSpec(machine="pc", ram_size=512 * MiB, slots=1, maxmem=970 * GiB, numa=())
    assert predict(pc, []).layout.max_used_gpa == 4 * GiB + 970 * GiB - 512 * MiB + GiB + \
        512 * MiB + 2 * GiB - 1


def test_dimm_check_order_per_qemu_version() -> None:
    odd = [AddDimm("a", 129 * MiB, 0, 0x100000001)]
    base = {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB, "numa": ()}
    kinds = {}
    for version in ((7, 2), (8, 2), (9, 2), (10, 0)):
        with pytest.raises(PlanRefused) as info:
            predict(MachineSpec(qemu_version=version, **base), odd)
        kinds[version] = info.value.kind
    assert kinds == {(7, 2): "misaligned-addr", (8, 2): "misaligned-addr",
                     (9, 2): "misaligned-size", (10, 0): "misaligned-size"}
    # 8.2.0 has no size check at all (eb1b7c4bd413): 129M is placed, the next
    # DIMM starts at the 2 MiB boundary after it.
    p = predict(MachineSpec(qemu_version=(8, 2), **base),
                [AddDimm("a", 129 * MiB), AddDimm("b", 128 * MiB)])
    assert [d.addr for d in p.final.of("pc-dimm")] == [4 * GiB, 4 * GiB + 130 * MiB]
    assert not p.final.of("pc-dimm")[0].guest_accepts


def test_address_zero_means_first_fit() -> None:
    p = predict(MachineSpec(ram_size=2 * GiB, slots=2, maxmem=4 * GiB, numa=()),
                [AddDimm("a", GiB, 0, 0)])
    assert p.final.of("pc-dimm")[0].addr == 4 * GiB


def test_maxmem_without_slots_starts_but_refuses_dimms() -> None:
    spec = MachineSpec(ram_size=2 * GiB, slots=0, maxmem=4 * GiB, numa=())
    assert predict(spec, []).layout.device_base == 4 * GiB
    with pytest.raises(PlanRefused) as info:
        predict(spec, [AddDimm("a", GiB)])
    assert info.value.qemu_message == \
        "no slots where allocated, please specify the 'slots' option"


def test_unmodelled_versions_are_refused() -> None:
    for kwargs in ({"qemu_version": (7, 1)}, {"qemu_version": (6, 2)},
                   {"machine_version": (3, 1)},
                   {"qemu_version": (7, 2), "machine_version": (8, 0)}):
        with pytest.raises(UsageError):
            MachineSpec(**kwargs)
    assert rules_for((10, 1)).size_check == "before-addr"
    assert rules_for((7, 2)).sources


def _releases(upto: tuple[int, int]) -> list[tuple[int, int]]:
    """Every QEMU release X.0-X.2 from the oldest modelled to ``upto``."""
    return [(a, b) for a in range(OLDEST[0], upto[0] + 1) for b in range(3)
            if OLDEST <= (a, b) <= upto]


def test_every_version_up_to_the_newest_read_gets_the_rules_in_force() -> None:
    """Each field is the value of the last change at or before the version,
    for every release 7.2 .. 11.1 -- the table's own definition, computed
    independently of rules_for()."""
    assert len(_releases(NEWEST_READ)) == 12  # 7.2, 8.0-8.2, 9.x, 10.x, 11.0, 11.1
    for version in _releases(NEWEST_READ):
        rules = rules_for(version)
        assert rules.qemu == version and rules.extrapolated_from is None
        for field in {c.field for c in CHANGES}:
            last = max((c for c in CHANGES if c.field == field and c.since <= version),
                       key=lambda c: c.since)
            assert getattr(rules, field) == last.value, (version, field)
            assert last.source in rules.sources
    # versions the issue named as refused before: each a change's neighbour
    assert rules_for((8, 1)).size_check == "after-addr"
    assert rules_for((9, 1)).backend_size_check is True
    assert rules_for((10, 2)).ram_share_memfd is True


def test_newer_than_read_runs_on_the_newest_rules_flagged() -> None:
    newest = rules_for(NEWEST_READ)
    for version in ((NEWEST_READ[0], NEWEST_READ[1] + 1), (NEWEST_READ[0] + 1, 0), (20, 2)):
        rules = rules_for(version)
        assert rules.extrapolated_from == NEWEST_READ and rules.qemu == version
        assert replace(rules, qemu=NEWEST_READ, machine_version=NEWEST_READ,
                       extrapolated_from=None) == newest
        spec = MachineSpec(qemu_version=version)
        assert predict(spec, [AddDimm("a", GiB, 1)]).to_json()["rules"][
            "extrapolated_from"] == f"{NEWEST_READ[0]}.{NEWEST_READ[1]}"


def test_machine_types_gone_from_qemu_11_1_are_refused_with_its_words() -> None:
    """QEMU 10.1+ drops machine types six years old (checked on 11.1.3:
    pc-i440fx-5.0 exits with 'unsupported machine type'; 5.2 is its oldest)."""
    assert oldest_machine_type((11, 1)) == (5, 2)
    assert oldest_machine_type((10, 2)) == (5, 0) and oldest_machine_type((12, 0)) == (6, 1)
    for family, prefix in (("pc", "pc-i440fx"), ("q35", "pc-q35")):
        for mver in ((4, 0), (5, 0), (5, 1)):
            spec = MachineSpec(machine=family, machine_version=mver,  # type: ignore[arg-type]
                               qemu_version=(11, 1))
            with pytest.raises(PlanRefused) as info:
                predict(spec, [])
            assert info.value.kind == "machine-type-removed"
            assert info.value.qemu_message == \
                f'unsupported machine type: "{prefix}-{mver[0]}.{mver[1]}"'
            # 10.0 still has them (its oldest is 2.4, below the model's 4.0)
            assert predict(replace(spec, qemu_version=(10, 0)), []).final.of("pc-dimm") == ()
        assert predict(MachineSpec(machine=family, machine_version=(5, 2),  # type: ignore
                                   qemu_version=(11, 1)), []).final.of("pc-dimm") == ()
    assert rules_for((10, 0)).oldest_machine is None
    assert rules_for((11, 1)).oldest_machine == (5, 2)


def test_machine_and_cpu_spellings() -> None:
    assert parse_machine_type("pc-q35-7.0") == MachineType("q35", (7, 0))
    assert parse_machine_type("pc") == MachineType("pc")
    assert parse_machine_type("virt-7.2") == MachineType("virt", (7, 2))
    with pytest.raises(UsageError):
        parse_machine_type("microvm")
    assert parse_cpu_option("max") == CpuSpec("AMD", 40, "max")
    assert parse_cpu_option("Skylake-Client-v4,phys-bits=46") == CpuSpec(
        "Intel", 46, "Skylake-Client-v4")
    assert parse_cpu_option("EPYC-Rome,vendor=GenuineIntel").vendor == "Intel"
    assert parse_cpu_option("intel,phys-bits=39").phys_bits == 39
    for bad in ("host", "qemu32", "nonsense", "max,phys-bits=60"):
        with pytest.raises(UsageError):
            parse_cpu_option(bad)
    host = host_cpu_from_cpuinfo("vendor_id\t: GenuineIntel\naddress sizes\t: 46 bits physical, "
                                 "57 bits virtual\n")
    assert host == CpuSpec("Intel", 46, "host")
    assert parse_cpu_option("host", host=host).phys_bits == 46
    # lm=off: a 32-bit vCPU, 36 phys-bits set by QEMU, which refuses a given one
    assert parse_cpu_option("qemu64,lm=off") == CpuSpec("AMD", 36, "qemu64", False)
    assert parse_cpu_option("max,-lm").long_mode is False
    with pytest.raises(UsageError, match="not user-configurable"):
        parse_cpu_option("qemu64,lm=off,phys-bits=36")


def test_host_memory_refusals() -> None:
    meminfo = "MemTotal:       24000000 kB\nSwapTotal:             0 kB\n" \
              "CommitLimit:    12000000 kB\nCommitted_AS:    1000000 kB\n"
    host = parse_meminfo(meminfo, "0\n")
    assert host.mem_total == 24000000 * 1024
    spec = MachineSpec(ram_size=6 * GiB, slots=2, maxmem=64 * GiB, host=host)
    with pytest.raises(PlanRefused) as info:
        predict(spec, [AddDimm("a", 46 * GiB, 1)])
    assert info.value.qemu_message == \
        "cannot set up guest memory '<backend>': Cannot allocate memory"
    predict(spec, [AddDimm("a", 20 * GiB, 1), AddDimm("b", 20 * GiB, 0)])  # one mapping each
    assert not parse_meminfo(meminfo, "1").refuses(1 << 50)
    assert parse_meminfo(meminfo, "2").refuses(11 * GiB)
    with pytest.raises(PlanRefused) as info:
        predict(MachineSpec(ram_size=40 * GiB, slots=0, maxmem=0, numa=(), host=host), [])
    assert info.value.qemu_message == \
        "cannot set up guest memory 'pc.ram': Cannot allocate memory"


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
    ops: list[AddDimm | RemoveDevice] = []
    for i, (size, node, _) in enumerate(plan):
        ops.append(AddDimm(f"d{i}", size, node))
        try:
            predict(spec, ops)
        except PlanRefused:
            ops.pop()
    p = predict(spec, ops)
    dimms = sorted(p.final.of("pc-dimm"), key=lambda d: d.addr)
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
        again = predict(spec, [*ops, RemoveDevice(last.id), last])
        assert again.final.of("pc-dimm") == p.final.of("pc-dimm")


def test_model_cli_versions_machine_types_and_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from harness.cli import main

    assert main(["model", "--qemu-version", "7.1", "--json"]) == 2
    assert "older than any" in json.loads(capsys.readouterr().out)["error"]["message"]
    for version in ("8.0", "8.1", "9.0", "9.1", "10.2", "11.0", "11.1"):
        assert main(["model", "--qemu-version", version, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["qemu_version"] == version and "extrapolated_from" not in doc
    assert main(["model", "--qemu-version", "12.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extrapolated_from"] == {"qemu": "11.1"}
    assert main(["model", "--qemu-version", "12.0"]) == 0
    assert ("memhp: model extrapolated: QEMU 12.0 is newer than the newest QEMU read (11.1); "
            "using 11.1's rules") in capsys.readouterr().err
    assert main(["model", "--qemu-version", "11.1", "--machine", "pc-i440fx-5.0",
                 "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["qemu_message"] == \
        'unsupported machine type: "pc-i440fx-5.0"'
    assert main(["model", "--qemu-version", "10.0", "--machine", "pc-q35-7.0", "--memory",
                 "512M,slots=1,maxmem=976G", "--numa", "", "--cpu", "EPYC,phys-bits=48",
                 "--add", "a:1G@0:0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine_type"] == "pc-q35-7.0" and doc["rules"]["enforce_amd_1tb_hole"] is False
    assert doc["dimms"][0]["addr"] == 4 * GiB and doc["cpu"]["phys_bits"] == 48
    assert main(["model", "--qemu-version", "10.0", "--machine", "q35", "--memory",
                 "512M,slots=1,maxmem=976G", "--numa", "", "--cpu", "EPYC,phys-bits=48",
                 "--add", "a:1G@0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dimms"][0]["addr"] == TiB  # relocated
    assert main(["model", "--qemu-version", "7.2", "--memory", "4096,slots=2,maxmem=8G",
                 "--numa", "", "--add", "a:129M@0:0x100000001", "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["qemu_message"] == "address must be aligned to 0x200000 bytes"


def test_model_cli_scenario_takes_the_cpu(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--scenario with --cpu: start-up is checked for that vCPU (46 phys-bits
    hold 2000 GiB of maxmem, TCG's default 40 do not)."""
    import json

    from harness.cli import main

    path = tmp_path / "s.toml"
    path.write_text('[machine]\ntype = "q35"\nmemory = "512M,slots=1,maxmem=2000G"\n'
                    'numa = ""\n[[step]]\nadd = "d0:1G@0"\n')
    assert main(["model", "--qemu-version", "7.2", "--cpu", "max,phys-bits=46",
                 "--scenario", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu"]["phys_bits"] == 46
    assert main(["model", "--qemu-version", "7.2", "--scenario", str(path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "phys-bits"


def test_backend_id_placeholder_matches_any_object_id() -> None:
    """The VM driver picks the backend id; the model's words stand for any."""
    from harness.devices.memory_device import DIMM_BACKEND, same_words

    words = f"cannot set up guest memory '{DIMM_BACKEND}': Cannot allocate memory"
    assert same_words(words, "cannot set up guest memory 'memhp-be7': Cannot allocate memory")
    assert not same_words(words, "cannot set up guest memory 'x y': Cannot allocate memory")
    assert not same_words(words, "cannot set up guest memory 'b1': Invalid argument")
    assert same_words("no slots", "no slots") and not same_words("no slots", "no slot")
