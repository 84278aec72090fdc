"""harness.qemu.devices: one record gives both the QMP hot-add arguments and
the command-line options, and they say the same thing."""

from __future__ import annotations

from harness.qemu.devices import QdevDevice, QomObject, pc_dimm, ram_backend


def _cli_dict(option: str) -> dict[str, str]:
    kind, *rest = option.split(",")
    return {"kind": kind, **dict(p.split("=", 1) for p in rest)}


def test_pc_dimm_qmp_and_cli_agree() -> None:
    dev = pc_dimm("dimm0", ram_backend(1 << 30, "be0"), node=1, addr=0x140000000)
    assert dev.id == "dimm0"
    flag, backend_opt, dflag, device_opt = dev.cli()
    assert (flag, dflag) == ("-object", "-device")
    qmp_be, qmp_dev = dev.backend.qmp_args(), dev.device.qmp_args()
    cli_be, cli_dev = _cli_dict(backend_opt), _cli_dict(device_opt)
    assert cli_be.pop("kind") == qmp_be.pop("qom-type") == "memory-backend-ram"
    assert cli_dev.pop("kind") == qmp_dev.pop("driver") == "pc-dimm"
    assert cli_be == {k: str(v) for k, v in qmp_be.items()}
    assert cli_dev == {k: str(v) for k, v in qmp_dev.items()}
    assert qmp_dev["memdev"] == "be0"


def test_no_addr_means_qemu_places_it() -> None:
    dev = pc_dimm("d", ram_backend(1 << 30), node=0)
    assert "addr" not in dev.device.qmp_args()
    assert dev.device.prop("addr") is None
    # each backend gets its own id
    assert ram_backend(1 << 20).id != ram_backend(1 << 20).id


def test_with_props_replaces_and_booleans_read_as_on_off() -> None:
    dev = QdevDevice("pc-dimm", "d", (("node", 0), ("addr", 1)))
    pinned = dev.with_props(addr=0x200000000, slot=3)
    assert pinned.prop("addr") == 0x200000000 and pinned.prop("slot") == 3
    assert [k for k, _ in pinned.props].count("addr") == 1
    assert dev.prop("addr") == 1  # frozen: the original is unchanged
    obj = QomObject("memory-backend-memfd", "m0", (("share", True), ("prealloc", False)))
    assert obj.cli() == ["-object", "memory-backend-memfd,id=m0,share=on,prealloc=off"]
    assert obj.qmp_args()["share"] is True


def test_commas_in_values_are_doubled_on_the_command_line() -> None:
    obj = QomObject("memory-backend-file", "f0", (("mem-path", "/tmp/a,b"),))
    assert obj.cli()[1] == "memory-backend-file,id=f0,mem-path=/tmp/a,,b"
    assert obj.qmp_args()["mem-path"] == "/tmp/a,b"
