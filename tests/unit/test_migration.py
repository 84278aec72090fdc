"""Migration destinations and cold-plug, without starting QEMU: the argv a
destination gets (every device pinned to what QEMU reported), the model's
placement of cold-plugged DIMMs, and the late-removal ordering the
unplug-then-reset step relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import PlanRefused, VMError
from harness.launch import coldplug_devices
from harness.model.predict import predict
from harness.model.spec import MachineSpec, RemoveDevice
from harness.qemu.argv import RuntimePaths, build_argv
from harness.qemu.config import VMConfig
from harness.qemu.devices import pc_dimm, ram_backend
from harness.qemu.migration import (
    MigrationStats,
    destination_devices,
    destination_name,
)
from harness.run.state import RunState
from harness.run.steps.migrate import compare_sides
from harness.scenario import add, build_scenario, remove, reset
from harness.units import GiB, MiB

PATHS = RuntimePaths(Path("/run/memhp-dst"))


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def _reported(addr: int, slot: int, node: int, size: int, memdev: str) -> dict[str, object]:
    # as query-memory-devices reports a pc-dimm (QEMU 7.2)
    return {"addr": addr, "slot": slot, "node": node, "size": size, "memdev": memdev,
            "hotplugged": True, "hotpluggable": True, "type": "dimm"}


def test_destination_pins_every_dimm_where_qemu_put_it() -> None:
    """After dimm0 (slot 0) was removed, dimm1 sits in slot 1 above a hole:
    a destination placing first-fit would put it in slot 0 at the hole, so
    its addr and slot are pinned, and devices keep plug order and ids."""
    be1, be2 = ram_backend(512 * MiB, "memhp-be1"), ram_backend(256 * MiB, "memhp-be2")
    plugged = {"dimm1": pc_dimm("dimm1", be1, 1), "dimm2": pc_dimm("dimm2", be2, 0)}
    reported = {
        "dimm1": _reported(0x160000000, 1, 1, 512 * MiB, "/objects/memhp-be1"),
        "dimm2": _reported(0x180000000, 0, 0, 256 * MiB, "/objects/memhp-be2"),
    }
    devices = destination_devices(plugged, reported)
    cfg = VMConfig(name="dst", memory=4 * GiB, slots=4, maxmem=8 * GiB, numa=(2 * GiB, 2 * GiB),
                   memory_devices=devices, incoming=True, ssh_port=4444)
    argv = build_argv(cfg, PATHS)
    assert [d for d in _pairs(argv, "-device") if d.startswith("pc-dimm")] == [
        "pc-dimm,id=dimm1,memdev=memhp-be1,node=1,addr=5905580032,slot=1",
        "pc-dimm,id=dimm2,memdev=memhp-be2,node=0,addr=6442450944,slot=0",
    ]
    assert _pairs(argv, "-object")[-2:] == [
        "memory-backend-ram,id=memhp-be1,size=536870912",
        "memory-backend-ram,id=memhp-be2,size=268435456",
    ]
    # the socket is in the destination's private work dir; -incoming comes
    # before the user's extra arguments and after the devices
    assert _pairs(argv, "-incoming") == [f"unix:{PATHS.migration_socket}"]
    assert argv.index("-incoming") > argv.index("-device")
    # the source's argv is the same machine without them
    src = build_argv(cfg.without_devices(), PATHS)
    assert "-incoming" not in src and "pc-dimm" not in " ".join(src)


def test_destination_refuses_what_it_cannot_recreate() -> None:
    plugged = {"dimm0": pc_dimm("dimm0", ram_backend(GiB, "b0"), 0)}
    with pytest.raises(VMError, match="does not list it"):
        destination_devices(plugged, {})
    with pytest.raises(VMError, match="did not plug"):
        destination_devices({}, {"x": _reported(0, 0, 0, GiB, "/objects/b")})
    with pytest.raises(VMError, match="reports no slot"):
        destination_devices(plugged, {"dimm0": {"addr": 0x140000000}})


def test_destination_names_and_figures() -> None:
    first = destination_name("vm-1-0")
    assert first.startswith("vm-1-0.m")
    again = destination_name(first)
    assert again.startswith("vm-1-0.m") and again.count(".m") == 1 and again != first
    stats = MigrationStats.from_query({
        "status": "completed", "total-time": 1144, "downtime": 6, "setup-time": 1,
        "ram": {"transferred": 358293687, "total": 5369241600, "duplicate": 1228216,
                "normal-bytes": 346562560, "dirty-sync-count": 3}}, 1.15)
    assert stats.to_json() == {
        "total_time_ms": 1144, "downtime_ms": 6, "setup_time_ms": 1,
        "transferred_bytes": 358293687, "ram_total_bytes": 5369241600,
        "duplicate_pages": 1228216, "normal_bytes": 346562560, "dirty_sync_count": 3,
        "wall_s": 1.15}


def test_compare_sides_names_every_difference_but_hotplugged() -> None:
    src = {"a": _reported(0x140000000, 0, 0, GiB, "/objects/b0")}
    same = {"a": dict(src["a"], hotplugged=False)}  # created from the command line
    assert compare_sides(src, same) == []
    moved = {"a": dict(src["a"], addr=0x180000000, slot=1)}
    assert [m.what for m in compare_sides(src, moved)] == ["destination addr",
                                                            "destination slot"]
    assert [m.what for m in compare_sides(src, {})] == ["present on destination"]


# -- cold-plug ------------------------------------------------------------------------

SPEC = MachineSpec(ram_size=4 * GiB, slots=4, maxmem=8 * GiB, numa=(2 * GiB, 2 * GiB))


def test_coldplug_is_placed_before_any_hot_add_in_command_line_order() -> None:
    """QEMU realizes -device options in command-line order once the machine
    exists (softmmu/vl.c qemu_create_cli_devices()); a hot-add comes after."""
    from dataclasses import replace

    spec = replace(SPEC, coldplug=(AddDimm("c0", 512 * MiB, 0), AddDimm("c1", 256 * MiB, 1)))
    pred = predict(spec, [AddDimm("h0", GiB, 1)])
    base = pred.layout.device_base
    assert [(d.id, d.addr, d.slot) for d in pred.boot.of("pc-dimm")] == [
        ("c0", base, 0), ("c1", base + 512 * MiB, 1)]
    [h0] = [d for d in pred.final.of("pc-dimm") if d.id == "h0"]
    assert (h0.addr, h0.slot) == (base + 768 * MiB, 2)
    # the node totals of the boot state count the cold DIMMs
    assert [n.hotplug_bytes for n in pred.boot.nodes] == [512 * MiB, 256 * MiB]
    # a cold DIMM is removed like a hot one, and its hole is refilled first-fit
    pred = predict(spec, [RemoveDevice("c0"), AddDimm("h1", 256 * MiB, 0)])
    assert [(d.id, d.addr) for d in pred.final.of("pc-dimm")] == [("h1", base),
                                                         ("c1", base + 512 * MiB)]


def test_coldplug_refusal_is_qemus_at_start_up() -> None:
    from dataclasses import replace

    spec = replace(SPEC, coldplug=(AddDimm("c0", 5 * GiB, 0),))
    with pytest.raises(PlanRefused) as info:
        predict(spec, [])
    assert info.value.kind == "maxmem-exceeded"
    assert info.value.coldplug is True and info.value.step is None  # type: ignore[attr-defined]


def test_coldplug_devices_for_the_command_line() -> None:
    s = build_scenario(name="c", machine="pc", memory="4G,slots=4,maxmem=8G", numa="2G,2G",
                       steps=[], coldplug=("c0:512M@1:0x140000000",))
    [dev] = coldplug_devices(s.machine)
    assert dev.id == "c0"
    assert dev.device.cli()[1].endswith(",node=1,addr=5368709120")
    assert dev.backend.cli()[1].endswith(",size=536870912")


# -- a removal that takes effect late (unplug-then-reset) ----------------------------

def test_a_late_removal_is_predicted_after_the_add_that_triggered_it() -> None:
    """remove d (wait = false), reset, add e: when the reset left d's eject
    request set in QEMU, e is placed with d still there and d goes after."""
    s = build_scenario(name="r", machine="pc", memory="4G,slots=4,maxmem=8G", numa="2G,2G",
                       steps=[add("d:512M@1"), remove("d", wait=False), reset(),
                              add("e:256M@0")])
    state = RunState.of_plan(s.machine, s.model_ops(), s.prediction)
    base = state.prediction.layout.device_base
    # the plan: d removed before e is placed, so e takes d's place
    assert [(d.id, d.addr) for d in state.prediction.final.of("pc-dimm")] == [("e", base)]
    state.ops_acted = 2  # add d, remove d (the reset is no operation)
    state.drop(1)  # d survived the reset
    assert [d.id for d in state.current("pc-dimm")] == ["d"]
    state.ops_acted = 3  # add e
    state.dropped.discard(1)
    state.op_after[1] = 2  # ejected on e's GPE, after e was placed
    state.repredict()
    assert [(d.id, d.addr) for d in state.current("pc-dimm")] == [("e", base + 512 * MiB)]


def test_report_of_a_step_whose_guest_was_not_observed(monkeypatch) -> None:
    """While paused the report shows QEMU's DIMMs against the model and says
    why the guest was not looked at; a migration prints its figures."""
    import io

    from harness.report import print_step
    from harness.run.results import StepResult

    dimm = {"id": "d", "addr": 0x140000000, "size": GiB, "node": 1, "slot": 0}
    step = StepResult(
        2, "remove d", {"dimms": [dimm | {"unplug_pending": True}]},
        {"dimms": [dimm], "guest": "not observed: the VM is paused (QMP stop)",
         "migration": {"total_time_ms": 1144, "downtime_ms": 6,
                       "transferred_bytes": 358293687, "source_pid": 1, "destination_pid": 2}},
        [], 0.1, {"device_del_s": 0.002})
    monkeypatch.setenv("COLUMNS", "160")  # one line per note
    out = io.StringIO()
    print_step(step, file=out)
    text = out.getvalue()
    assert "d (unplug pending)" in text and "0x140000000 / 0x140000000" in text
    assert "not observed: the VM is paused" in text
    assert "1144 ms total, 6 ms downtime, 358293687 bytes" in text


# -- virtio-mem on the destination ----------------------------------------------------


def _reported_vmem(memaddr: int, size: int, requested: int, pci: str | None = "4.0"
                   ) -> dict[str, object]:
    # as query-memory-devices reports a virtio-mem (QEMU 7.2/10.0), plus the
    # PCI address VM.memory_device_info() adds from query-pci
    out: dict[str, object] = {
        "id": "vmem0", "memaddr": memaddr, "node": 1, "requested-size": requested,
        "size": size, "max-size": 4 * GiB, "block-size": 2 * MiB,
        "memdev": "/objects/memhp-be7", "type": "virtio-mem"}
    if pci is not None:
        out["pci-addr"] = pci
    return out


def test_destination_pins_virtio_mem_address_block_size_request_and_pci_slot() -> None:
    """The destination's virtio-mem-pci is the source's: memaddr and
    block-size (QEMU's migration sanity checks), the current requested-size
    (not the plug-time one) and the PCI slot (the vmstate section is named
    by it); the plug-time props (memdev, node, dynamic-memslots) stay."""
    from harness.qemu.devices import virtio_mem

    be = ram_backend(4 * GiB, "memhp-be7")
    dimm = pc_dimm("dimm0", ram_backend(512 * MiB, "memhp-be6"), 0)
    plugged = {"dimm0": dimm,
               "vmem0": virtio_mem("vmem0", be, 1, GiB, dynamic_memslots=True)}
    reported = {"dimm0": _reported(0x140000000, 0, 0, 512 * MiB, "/objects/memhp-be6"),
                "vmem0": _reported_vmem(0x160000000, 2 * GiB, 2 * GiB, "1f.0")}
    devices = destination_devices(plugged, reported)
    cfg = VMConfig(name="dst", memory=4 * GiB, slots=4, maxmem=16 * GiB,
                   numa=(2 * GiB, 2 * GiB), memory_devices=devices, incoming=True,
                   ssh_port=4444)
    argv = build_argv(cfg, PATHS)
    assert [d for d in _pairs(argv, "-device") if d.startswith(("pc-dimm", "virtio-mem"))] == [
        "pc-dimm,id=dimm0,memdev=memhp-be6,node=0,addr=5368709120,slot=0",
        "virtio-mem-pci,id=vmem0,memdev=memhp-be7,node=1,dynamic-memslots=on,"
        "memaddr=5905580032,block-size=2097152,requested-size=2147483648,addr=1f.0",
    ]
    assert "memory-backend-ram,id=memhp-be7,size=4294967296" in _pairs(argv, "-object")
    # without the PCI address (a device behind a bridge) the destination is refused
    reported["vmem0"] = _reported_vmem(0x160000000, GiB, GiB, pci=None)
    with pytest.raises(VMError, match="reports no pci-addr for vmem0"):
        destination_devices(plugged, reported)


def test_pci_addresses_from_query_pci() -> None:
    """Root-bus devices with an id, as slot.function in hex (qdev's PCI
    addr syntax); devices without an id or behind a bridge are left out."""
    from harness.qemu.devices import pci_addresses

    answer = [{"bus": 0, "devices": [
        {"bus": 0, "slot": 0, "function": 0, "qdev_id": ""},
        {"bus": 0, "slot": 4, "function": 0, "qdev_id": "vmem0"},
        {"bus": 0, "slot": 0x1e, "function": 2, "qdev_id": "vmem1"},
        {"bus": 1, "slot": 1, "function": 0, "qdev_id": "behind"}]},
        {"bus": 1, "devices": [{"bus": 1, "slot": 1, "function": 0, "qdev_id": "x"}]}]
    assert pci_addresses(answer) == {"vmem0": "4.0", "vmem1": "1e.2"}


def test_compare_sides_covers_virtio_mem_fields() -> None:
    src = {"vmem0": _reported_vmem(0x160000000, GiB, GiB)}
    assert compare_sides(src, {"vmem0": dict(src["vmem0"])}) == []
    moved = {"vmem0": dict(src["vmem0"], size=0, **{"pci-addr": "5.0",
                                                    "requested-size": 0})}
    assert [m.what for m in compare_sides(src, moved)] == [
        "destination size", "destination requested-size", "destination pci-addr"]


class _FakeVM:
    """A stand-in for harness.qemu.vm.VM (named as a fake): records the QMP
    commands migrate_vm sends to the source and how the destination ends."""

    def __init__(self, ssh_fails: bool) -> None:
        self.paused = False
        self.sent: list[str] = []
        self.ssh_fails = ssh_fails
        self.stopped = False
        self.config = type("C", (), {"name": "t"})()
        self.memory_devices: dict[str, object] = {}
        self.shell = self.guest = None

    def swap_runtime(self, other: _FakeVM) -> None: ...

    def memory_device_info(self) -> dict[str, dict[str, object]]:
        return {}

    def incoming_twin(self, name: str, devices: object) -> _FakeVM:
        self.twin = _FakeVM(self.ssh_fails)
        return self.twin

    def launch(self) -> None: ...

    def disconnect_ssh(self) -> None:
        self.shell = self.guest = None

    def connect_ssh(self) -> None:
        if self.ssh_fails:
            raise OSError("no SSH on the destination")

    def mark_failed(self) -> None: ...

    def stop(self) -> None:
        self.stopped = True

    def execute(self, command: str, *args: object, **kw: object) -> dict[str, object]:
        self.sent.append(command)
        return {}


def test_completed_migration_without_destination_ssh_lets_the_source_run_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found under load: a completed migration whose destination answered no
    SSH ended the destination and left the source in postmigrate, so every
    later step met a stopped guest; the source is now resumed (`cont`)."""
    import dataclasses

    import harness.qemu.migration as mig

    stats = mig.MigrationStats(**{f.name: 1 for f in dataclasses.fields(mig.MigrationStats)})
    monkeypatch.setattr(mig, "migrate", lambda src, dst: stats)
    src = _FakeVM(ssh_fails=True)
    with pytest.raises(OSError):
        mig.migrate_vm(src)  # type: ignore[arg-type]
    assert src.twin.stopped and src.sent == ["cont"]
    ok = _FakeVM(ssh_fails=False)
    assert mig.migrate_vm(ok) is stats  # type: ignore[arg-type]
    assert "cont" not in ok.sent
