"""Backends: BackendSpec validation, per-backend alignment and refusals in
the model, QMP/CLI properties, hugepage pool parsing on a fake sysfs, and
the add-step vocabulary.  (Checked against real QEMU 7.2/10.0 in
tests/integration/test_backends_vs_qemu.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import PlanRefused, UsageError
from harness.host.hugepage_pools import parse_mounts, read_pools
from harness.model.backend import BackendSpec, parse_host_nodes, parse_hugepages, size_to_str
from harness.model.predict import predict
from harness.model.qemu_rules.host import HostMemory, HugepagePool
from harness.model.spec import MachineSpec, RemoveDevice
from harness.qemu.devices import backend_object
from harness.scenario import add, load_scenario
from harness.units import GiB, KiB, MiB

SPEC = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=64 * GiB, numa=())
HOST = HostMemory(hugepages=(HugepagePool(2 * MiB, 100), HugepagePool(GiB, 1)), nodes=(0,))


def refusal(spec: MachineSpec, *ops: AddDimm | RemoveDevice) -> str:
    with pytest.raises(PlanRefused) as exc:
        predict(spec, list(ops))
    return exc.value.qemu_message  # type: ignore[attr-defined]


def test_alignment_per_backend() -> None:
    assert BackendSpec().alignment == 2 * MiB
    assert BackendSpec("memfd").alignment == 4 * KiB
    assert BackendSpec("file").alignment == 4 * KiB
    assert BackendSpec("memfd", hugepages=GiB).alignment == GiB


def test_one_gib_page_dimm_moves_to_a_gib_boundary() -> None:
    small = AddDimm("a", 128 * MiB)
    big = AddDimm("b", GiB, backend=BackendSpec("memfd", hugepages=GiB))
    dimms = {d.id: d for d in predict(SPEC, [small, big]).final.of("pc-dimm")}
    base = predict(SPEC, []).layout.device_base
    assert dimms["a"].addr == base
    assert dimms["b"].addr == base + GiB  # not base + 128M as a RAM DIMM would be
    ram = {d.id: d for d in predict(SPEC, [small, AddDimm("b", GiB)]).final.of("pc-dimm")}
    assert ram["b"].addr == base + 128 * MiB


def test_4k_backend_packs_after_an_odd_size() -> None:
    a = AddDimm("a", 4 * MiB + 4 * KiB, backend=BackendSpec("memfd"))
    b = AddDimm("b", 4 * MiB, backend=BackendSpec("memfd"))
    dimms = {d.id: d for d in predict(SPEC, [a, b]).final.of("pc-dimm")}
    assert dimms["b"].addr == dimms["a"].end


@pytest.mark.parametrize("backend, size, words", [
    (BackendSpec(policy="bind"), GiB, "host-nodes must be set for policy bind"),
    (BackendSpec(host_nodes=(0,)), GiB, "host-nodes must be empty for policy default"),
    (BackendSpec(policy="bind", host_nodes=(5,)), GiB,
     "cannot bind memory to host NUMA nodes: Invalid argument"),
    (BackendSpec(policy="bind", host_nodes=(200,)), GiB, "Invalid host-nodes value: 200"),
    (BackendSpec(prealloc=True, reserve=False), GiB,
     "'prealloc=on' and 'reserve=off' are incompatible"),
    (BackendSpec("memfd", hugepages=2 * MiB), 3 * MiB,
     "failed to resize memfd to 3145728: Invalid argument"),
    (BackendSpec("file", hugepages=2 * MiB), MiB,
     "memory size 0x100000 must be equal to or larger than page size 0x200000"),
    (BackendSpec("memfd", hugepages=2 * MiB), 202 * MiB,
     "unable to map backing store for guest RAM: Cannot allocate memory"),
    (BackendSpec("file", hugepages=GiB), 2 * GiB,
     "unable to map backing store for guest RAM: Cannot allocate memory"),
])
def test_backend_refusals_in_qemus_words(backend: BackendSpec, size: int, words: str) -> None:
    spec = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=64 * GiB, numa=(),
                       host=HOST)
    assert words in refusal(spec, AddDimm("d", size, backend=backend))


def test_size_check_differs_between_7_2_and_10_0() -> None:
    be = BackendSpec("file", hugepages=2 * MiB)
    op = AddDimm("d", 3 * MiB, backend=be)
    assert refusal(SPEC, op) == "backend memory size must be multiple of 0x200000"
    spec10 = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=64 * GiB, numa=(),
                         qemu_version=(10, 0))
    assert refusal(spec10, op) == \
        "backend 'memory-backend-file' memory size must be multiple of 2 MiB"


def test_hugepages_held_across_steps() -> None:
    spec = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=64 * GiB, numa=(),
                       host=HostMemory(hugepages=(HugepagePool(2 * MiB, 64),)))
    kept = BackendSpec("file", hugepages=2 * MiB, share=True)
    freed = BackendSpec("memfd", hugepages=2 * MiB)
    noreserve = BackendSpec("memfd", hugepages=2 * MiB, reserve=False)
    predict(spec, [AddDimm("a", 128 * MiB, backend=freed), RemoveDevice("a"),
                   AddDimm("b", 128 * MiB, backend=freed)])
    predict(spec, [AddDimm("a", 128 * MiB, backend=noreserve),
                   AddDimm("b", 128 * MiB, backend=freed)])
    assert "Cannot allocate memory" in refusal(
        spec, AddDimm("a", 128 * MiB, backend=kept), RemoveDevice("a"),
        AddDimm("b", 2 * MiB, backend=freed))


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "ram", "hugepages": 2 * MiB}, "no hugepages"),
    ({"kind": "disk"}, "unknown"),
    ({"kind": "memfd", "mem_path": "/x"}, "mem_path is for file"),
    ({"kind": "memfd", "discard_data": True}, "discard_data is for file"),
    ({"kind": "file", "seal": True}, "seal is for memfd"),
    ({"prealloc_threads": 2}, "without prealloc"),
    ({"kind": "file", "mem_path": "rel/path"}, "absolute"),
    ({"policy": "strict"}, "host policy"),
])
def test_spec_refuses_what_memhp_cannot_express(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BackendSpec(**kwargs)


def test_parsers() -> None:
    assert parse_hugepages("2M") == 2 * MiB and parse_hugepages("none") is None
    with pytest.raises(UsageError):
        parse_hugepages("4M")
    assert parse_host_nodes("0-2,5") == (0, 1, 2, 5)
    assert parse_host_nodes([1, 0]) == (0, 1)
    with pytest.raises(UsageError):
        parse_host_nodes("2-1")
    assert size_to_str(2 * MiB) == "2 MiB" and size_to_str(GiB) == "1 GiB"


def test_qmp_and_cli_properties() -> None:
    be = BackendSpec("memfd", hugepages=2 * MiB, prealloc=True, prealloc_threads=2,
                     host_nodes=(0, 2), policy="bind")
    obj = backend_object(4 * MiB, be, backend_id="b0")
    assert obj.qmp_args() == {"qom-type": "memory-backend-memfd", "id": "b0", "size": 4 * MiB,
                              "hugetlb": True, "hugetlbsize": 2 * MiB, "prealloc": True,
                              "prealloc-threads": 2, "host-nodes": [0, 2], "policy": "bind"}
    assert obj.cli()[1].endswith("host-nodes=0,host-nodes=2,policy=bind")
    f = backend_object(4 * MiB, BackendSpec("file", share=True, discard_data=True),
                       backend_id="b1", mem_path="/m/f")
    assert f.cli() == ["-object", "memory-backend-file,id=b1,size=4194304,mem-path=/m/f,"
                       "discard-data=on,share=on"]


def _fake_sysfs(root: Path) -> None:
    for base in (root / "kernel/mm/hugepages",
                 root / "devices/system/node/node0/hugepages"):
        for name, nr, free in (("hugepages-2048kB", 10, 7), ("hugepages-1048576kB", 1, 1)):
            d = base / name
            d.mkdir(parents=True)
            (d / "nr_hugepages").write_text(f"{nr}\n")
            (d / "free_hugepages").write_text(f"{free}\n")
            (d / "surplus_hugepages").write_text("0\n")
            if "kernel" in str(base):
                (d / "resv_hugepages").write_text("2\n")


def test_read_pools_on_a_fake_sysfs(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path)
    pools = {p.page_size: p for p in read_pools(tmp_path)}
    assert pools[2 * MiB].available == 5 and pools[2 * MiB].node_free(0) == 7
    assert pools[GiB].nr == 1


def test_parse_mounts() -> None:
    text = ("none /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
            "none /mnt/h\\0401g hugetlbfs rw,relatime,pagesize=1024M 0 0\n"
            "tmpfs /tmp tmpfs rw 0 0\n")
    mounts = parse_mounts(text, 2 * MiB)
    assert [(str(m.path), m.page_size) for m in mounts] == [
        ("/dev/hugepages", 2 * MiB), ("/mnt/h 1g", GiB)]


def test_add_step_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('''
[[step]]
add = "h0:1G@1"
backend = "memfd"
hugepages = "2M"
share = true
prealloc = true
prealloc_threads = 2
host_nodes = "0"
policy = "bind"
[[step]]
add = "f0:128M@0"
backend = "file"
mem_path = "/dev/hugepages"
hugepages = "2M"
discard_data = true
reserve = true
dump = false
merge = false
''')
    s = load_scenario(path)
    a, f = (st.op for st in s.steps)
    assert a is not None and f is not None
    assert a.backend == BackendSpec("memfd", hugepages=2 * MiB, share=True, prealloc=True,
                                    prealloc_threads=2, host_nodes=(0,), policy="bind")
    assert f.backend.mem_path == "/dev/hugepages" and f.backend.dump is False
    assert add("x:1G", backend="file", share=True).op.backend.share  # type: ignore[union-attr]


@pytest.mark.parametrize("extra, message", [
    ('backend = "nvdimm"', "backend 'nvdimm' unknown"),
    ('hugepages = "3M"', "not a hugepage size"),
    ("share = 1", "share must be true or false"),
    ('host_nodes = "a"', "not a node list"),
    ('backend = "memfd"\nmem_path = "/x"', "mem_path is for file"),
    ('policy = "online_movable"', "host policy"),
])
def test_bad_backend_keys_are_named(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'[[step]]\nadd = "a:1G@1"\n{extra}\n')
    with pytest.raises(UsageError, match=message):
        load_scenario(path)


def test_prealloc_thread_rule() -> None:
    """util/oslib-posix.c get_memset_num_threads(): default = vCPUs, capped
    by host CPUs, 16, pages and size / 64 MiB; one thread means none."""
    be = BackendSpec("memfd", hugepages=2 * MiB, prealloc=True)
    assert be.prealloc_threads_used(256 * MiB, host_cpus=2, vcpus=4) == 2
    assert be.prealloc_threads_used(256 * MiB, host_cpus=32, vcpus=8) == 4  # 256M / 64M
    assert be.prealloc_threads_used(64 * MiB, host_cpus=32, vcpus=8) == 0   # one: none
    gib = BackendSpec("memfd", hugepages=GiB, prealloc=True, prealloc_threads=8)
    assert gib.prealloc_threads_used(2 * GiB, host_cpus=32, vcpus=1) == 2  # two pages
    assert BackendSpec("memfd").prealloc_threads_used(GiB, 8, 8) == 0  # no prealloc


def test_overcommit_accounting_per_backend() -> None:
    """A 64 GiB mapping on a 16 GiB host without swap (heuristic overcommit):
    refused for private and (7.2) shared anonymous RAM, not for shared
    memfd, reserve=off or hugetlb; 10.0's share=on RAM is a memfd."""
    host = HostMemory(mem_total=16 * GiB)
    for version, ram_share_refused in (((7, 2), True), ((10, 0), False)):
        spec = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=128 * GiB, numa=(),
                           host=host, qemu_version=version)

        def refused(be: BackendSpec, spec: MachineSpec = spec) -> bool:
            try:
                predict(spec, [AddDimm("d", 64 * GiB, backend=be)])
            except PlanRefused as exc:
                return "Cannot allocate memory" in exc.qemu_message  # type: ignore[attr-defined]
            return False

        assert refused(BackendSpec())
        assert refused(BackendSpec("file"))
        assert refused(BackendSpec(share=True)) is ram_share_refused
        assert not refused(BackendSpec("memfd"))
        assert not refused(BackendSpec(reserve=False))
        assert not refused(BackendSpec("file", share=True))


def test_memhp_model_scenario_with_backends(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    """`memhp model --scenario`: the 1 GiB-page DIMM on its GiB boundary, and
    QEMU's words for a refused backend (exit 2)."""
    import json

    from harness.cli import main

    path = tmp_path / "m.toml"
    path.write_text('[machine]\nmemory = "4G,slots=8,maxmem=16G"\nnuma = "2G,2G"\n'
                    '[[step]]\nadd = "r0:128M@0"\n'
                    '[[step]]\nadd = "g0:1G@1"\nbackend = "memfd"\nhugepages = "1G"\n')
    assert main(["model", "--qemu-version", "7.2", "--scenario", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    g0 = next(d for d in doc["dimms"] if d["id"] == "g0")
    assert g0["addr"] % GiB == 0 and g0["align"] == GiB and g0["hugepages"] == 1
    path.write_text('[[step]]\nadd = "m0:1G@1"\nbackend = "memfd"\npolicy = "bind"\n')
    assert main(["model", "--qemu-version", "7.2", "--scenario", str(path)]) == 2
    assert "host-nodes must be set for policy bind" in capsys.readouterr().err


def test_sweep_restores_what_a_dead_memhp_left(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A record of a process that is gone: its nr_hugepages are written back
    (into a fake sysfs here), its files removed, the record dropped; a live
    process's record is left alone."""
    import json
    import os

    import harness.host.hugepage_records as hp
    from harness.host.hugepage_records import sweep_stale
    from harness.leaks import proc_start_time

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setattr(hp, "record_dir", lambda: runtime)
    sysfs = tmp_path / "sys"
    _fake_sysfs(sysfs)
    fs = tmp_path / "hugetlbfs"  # a stand-in hugetlbfs mount point (fake /proc/mounts)
    fs.mkdir()
    pid = 2 ** 22 + 7
    left = fs / f"memhp-{pid}-b0"
    left.write_text("x")
    mounts = f"none {fs} hugetlbfs rw,relatime,pagesize=2M 0 0\n"
    dead = {"pid": pid, "start": "1", "nr": {str(2 * MiB): 3}, "mounts": [],
            "files": [str(left)]}
    (runtime / "memhp-hugepages-dead.json").write_text(json.dumps(dead))
    alive = {"pid": os.getpid(), "start": proc_start_time(os.getpid()),
             "nr": {str(2 * MiB): 99}, "mounts": [], "files": []}
    (runtime / "memhp-hugepages-alive.json").write_text(json.dumps(alive))
    assert [p.name for p in sweep_stale(sysfs, mounts)] == ["memhp-hugepages-dead.json"]
    assert (sysfs / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "3\n"
    assert not left.exists()
    assert (runtime / "memhp-hugepages-alive.json").exists()


@pytest.mark.parametrize("forgery", ["file-elsewhere", "dir-contents", "mount", "pool",
                                     "not-private", "symlink"])
def test_a_forged_hugepage_record_touches_nothing(tmp_path: Path, forgery: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: a record naming a file outside a hugetlbfs, a directory to
    empty, a path to unmount, an absurd pool count, or a record that is not
    a private file of ours: nothing outside memhp's own things is touched."""
    import json

    import harness.host.hugepage_records as hp
    from harness.host.hugepage_records import sweep_stale

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setattr(hp, "record_dir", lambda: runtime)
    sysfs = tmp_path / "sys"
    _fake_sysfs(sysfs)
    nr_file = sysfs / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    nr0 = nr_file.read_text()
    victim_dir = tmp_path / "precious"
    victim_dir.mkdir()
    victim = victim_dir / "data"
    victim.write_text("keep me")
    pid = 2 ** 22 + 9
    record: dict[str, object] = {"pid": pid, "start": "1", "nr": {}, "mounts": [], "files": []}
    if forgery == "file-elsewhere":
        record["files"] = [str(victim), str(victim_dir / f"memhp-{pid}-x")]
        (victim_dir / f"memhp-{pid}-x").write_text("named like ours, not on hugetlbfs")
    elif forgery == "dir-contents":
        record["mounts"] = [str(victim_dir)]
    elif forgery == "mount":
        record["mounts"] = ["/"]
    elif forgery == "pool":
        record["nr"] = {str(2 * MiB): 460800 * 1000, "4096": 5}
    path = runtime / f"memhp-hugepages-{pid}.json"
    if forgery == "symlink":
        real = tmp_path / "real.json"
        real.write_text(json.dumps({**record, "files": [str(victim)]}))
        path.symlink_to(real)
    else:
        path.write_text(json.dumps(record))
    if forgery == "not-private":
        path.write_text(json.dumps({**record, "files": [str(victim)]}))
        path.chmod(0o666)
    sweep_stale(sysfs, mounts_text="")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in victim_dir.iterdir()) == sorted(
        ["data"] + ([f"memhp-{pid}-x"] if forgery == "file-elsewhere" else []))
    assert nr_file.read_text() == nr0


def test_a_hugepage_plan_beyond_the_host_is_refused() -> None:
    from harness.errors import UsageError
    from harness.host.hugepage_pools import check_room

    meminfo = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n"
    check_room({2 * MiB: 1024}, meminfo)  # 2 GiB fits
    with pytest.raises(UsageError, match="460800 x 2048 kB"):
        check_room({2 * MiB: 460800}, meminfo)  # 900 GiB does not


def test_needs_of_a_plan() -> None:
    from harness.host.hugepage_pools import needs_of

    adds = [AddDimm("a", 256 * MiB, backend=BackendSpec("memfd", hugepages=2 * MiB)),
            AddDimm("b", 3 * MiB, backend=BackendSpec("file", hugepages=2 * MiB)),
            AddDimm("c", GiB, backend=BackendSpec("memfd", hugepages=GiB)),
            AddDimm("d", GiB)]
    assert needs_of(adds) == {2 * MiB: 130, GiB: 1}


def test_prealloc_without_room_is_refused_in_qemus_words() -> None:
    """util/oslib-posix.c qemu_prealloc_mem(): a file system with less room
    than the preallocated backends at the same mem_path (a lazy one takes
    none up front)."""
    host = HostMemory(fs_free=(("/small", 16 * MiB),))
    spec = MachineSpec(machine="pc", ram_size=2 * GiB, slots=8, maxmem=64 * GiB, numa=(),
                       host=host)
    pre = BackendSpec("file", mem_path="/small", share=True, prealloc=True)
    lazy = BackendSpec("file", mem_path="/small", share=True)
    predict(spec, [AddDimm("a", 8 * MiB, backend=pre), AddDimm("b", 64 * MiB, backend=lazy),
                   AddDimm("c", 8 * MiB, backend=pre)])
    assert refusal(spec, AddDimm("a", 8 * MiB, backend=pre),
                   AddDimm("c", 12 * MiB, backend=pre)) == \
        "qemu_prealloc_mem: preallocating memory failed: Bad address"
    # another path, or an unread one: not predicted
    other = BackendSpec("file", mem_path="/other", share=True, prealloc=True)
    predict(spec, [AddDimm("a", GiB, backend=other)])
