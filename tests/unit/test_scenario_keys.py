"""TOML keys of the newer step kinds: workload, expect_splat, expect_refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import PlanRefused, UsageError
from harness.scenario import load_scenario


def load(tmp_path: Path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def test_workload_splats_and_refusals_parse(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[machine]
memory = "4G,slots=2,maxmem=8G"
numa = "2G,2G"
[guest]
expect_splats = ["UBSAN: .*"]
[[step]]
add = "a:1G@1"
[[step]]
add = "b:1G@1"
[[step]]
add = "c:1G@1"
expect_refusal = "no free slots"
[[step]]
workload = "w0"
node = 1
size = "64M"
[[step]]
offline = "a"
expect_splat = ["page dumped because: unmovable page"]
''')
    assert s.expect_splats == ("UBSAN: .*",)
    assert [st.action for st in s.steps] == ["add", "add", "add", "workload", "offline"]
    assert s.steps[2].expect_refusal == "no free slots" and not s.steps[2].is_model_op
    assert s.steps[3].workload is not None and s.steps[3].workload.size == 64 << 20
    assert s.steps[4].expect_splat == ("page dumped because: unmovable page",)
    assert [op.id for op in s.model_ops()] == ["a", "b"]
    assert "no free slots" in s.refusals[2].qemu_message


@pytest.mark.parametrize("step, message", [
    ('workload = "w0"\nsize = "1000"', "multiple of 1M"),
    ('workload = "0w"', "workload id"),
    ('add = "a:1G@1"\nexpect_refusal = 3', "expect_refusal must be"),
    ('add = "a:1G@1"\nexpect_splat = "("', "not a regular expression"),
    ('offline = "a"\nexpect_refusal = true', "unknown key"),
])
def test_bad_keys_are_named(tmp_path: Path, step: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[[step]]\nadd = "a:1G@1"\n[[step]]\n{step}\n')


ISSUE_18 = '''
[[step]]
add = "vmem0:4G@1"
device = "virtio-mem"
requested = "1G"
[[step]]
resize = "vmem0"
requested = "3G"
[[step]]
resize = "vmem0"
requested = "0"
[[step]]
remove = "vmem0"
'''


def test_virtio_mem_steps_parse(tmp_path: Path) -> None:
    """The TOML of issue 18, exactly: it runs on QEMU 10.0; on 7.2 QEMU
    cannot remove a virtio-mem, so the plan is refused up front."""
    path = tmp_path / "s.toml"
    path.write_text(ISSUE_18)
    s = load_scenario(path, qemu_version=(10, 0))
    assert [st.action for st in s.steps] == ["add", "resize", "resize", "remove"]
    vmem = s.steps[0].op
    assert vmem is not None and (vmem.size, vmem.node, vmem.requested) == (4 << 30, 1, 1 << 30)
    assert [st.requested for st in s.steps[1:3]] == [3 << 30, 0]
    assert [type(op).__name__ for op in s.model_ops()] == [
        "AddVirtioMem", "ResizeVirtioMem", "ResizeVirtioMem", "RemoveDevice"]
    with pytest.raises(PlanRefused, match="cannot unplug virtio-mem"):
        load_scenario(path)


def test_virtio_mem_optional_keys_and_refusals(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[[step]]
add = "vmem0:1G@0"
device = "virtio-mem"
block_size = "4M"
memaddr = "0x240000000"
unplugged_inaccessible = true
[[step]]
resize = "vmem0"
requested = "2G"
expect_refusal = "cannot exceed the memory backend size"
[[step]]
remove = "vmem0"
expect_refusal = "cannot be unplugged"
''')
    vmem = s.steps[0].op
    assert vmem is not None and (vmem.block_size, vmem.addr) == (4 << 20, 0x240000000)
    assert vmem.unplugged_inaccessible is True and vmem.dynamic_memslots is None
    assert not s.steps[1].is_model_op and not s.steps[2].is_model_op
    refusals = s.refusals
    assert refusals[1].qemu_message == (  # type: ignore[attr-defined]
        "'requested-size' cannot exceed the memory backend size(0x40000000)")
    assert refusals[2].qemu_message == (  # type: ignore[attr-defined]
        "virtio based memory devices cannot be unplugged.")


@pytest.mark.parametrize("steps, message", [
    ('add = "a:1G"\nrequested = "1G"', "unknown key.*requested"),
    ('add = "a:1G"\ndevice = "nvdimm"', "not a memory device"),
    ('add = "a:1G"\ndevice = "virtio-mem"\nblock_size = 2', "block_size must be a str"),
    ('add = "a:1G"\ndevice = "virtio-mem"\nmemaddr = "x1"', "memaddr 'x1' is not a number"),
    ('add = "a:1G:0x240000000"\ndevice = "virtio-mem"', "memaddr, not :ADDR"),
    ('add = "a:1G"\ndevice = "virtio-mem"\n[[step]]\nresize = "a"', "resize needs requested"),
    ('add = "a:1G"\n[[step]]\nresize = "a"\nrequested = "0"', "not a virtio-mem"),
    ('resize = "b"\nrequested = "0"', "which no earlier step adds"),
    ('add = "a:1G"\ndevice = "virtio-mem"\n[[step]]\nonline = "a"', "not modelled"),
    ('add = "a:1G"\ndevice = "virtio-mem"\nrequested = "2G"', "not modelled"),
    ('add = "a:1G"\ndevice = "virtio-mem"\ndynamic_memslots = true',
     "QEMU 7.2 has no dynamic-memslots"),
    ('pause = true\n[[step]]\nadd = "a:1G"\ndevice = "virtio-mem"\n[[step]]\n'
     'resume = true', "with the guest running"),
    ('add = "a:1G"\ndevice = "virtio-mem"\n[[step]]\npause = true\n[[step]]\n'
     'resize = "a"\nrequested = "0"\n[[step]]\nmigrate = true\n[[step]]\nresume = true',
     "resize of a while paused has not reached the guest"),
    ('add = "a:1G"\ndevice = "virtio-mem"\n[[step]]\npause = true\n[[step]]\n'
     'remove = "a"\n[[step]]\nresume = true', "with the guest running"),
])
def test_virtio_mem_bad_steps_are_named(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises((UsageError, PlanRefused), match=message):
        load(tmp_path, f"[[step]]\n{steps}\n")


def test_lifecycle_steps_and_coldplug_parse(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[machine]
memory = "4G,slots=4,maxmem=8G"
numa = "2G,2G"
coldplug = ["cold0:512M@0", "cold1:256M@1:0x180000000"]
[[step]]
online = "cold0"
[[step]]
migrate = true
[[step]]
pause = true
[[step]]
add = "h:256M@1"
[[step]]
remove = "cold1"
[[step]]
resume = true
[[step]]
reboot = true
[[step]]
remove = "h"
wait = false
[[step]]
reset = true
''')
    assert [d.id for d in s.machine.coldplug] == ["cold0", "cold1"]
    assert s.machine.coldplug[1].addr == 0x180000000
    assert [st.action for st in s.steps] == ["online", "migrate", "pause", "add", "remove",
                                             "resume", "reboot", "remove", "reset"]
    assert s.steps[4].wait and not s.steps[7].wait
    assert [d.id for d in s.predict().boot.of("pc-dimm")] == ["cold0", "cold1"]


@pytest.mark.parametrize("steps, message", [
    ('migrate = 1', "migrate must be true"),
    ('pause = true\n[[step]]\npause = true', "already paused"),
    ('resume = true', "not paused"),
    ('pause = true\n[[step]]\nonline = "a"', "needs the guest running"),
    ('pause = true\n[[step]]\nreboot = true', "needs the guest running"),
    ('pause = true\n[[step]]\nreset = true\n[[step]]\nmigrate = true', "has not booted"),
    ('pause = true', "ends paused"),
    ('pause = true\n[[step]]\nremove = "a"\n[[step]]\nmigrate = true',
     "does not migrate an unplug"),
    ('remove = "a"\nwait = false\n[[step]]\nonline = "a"', "followed by reset"),
    ('remove = "a"\nwait = false', "ends the run"),
    ('remove = "a"\nwait = "no"', "wait must be a bool"),
    ('online = "a"\nwait = false', "unknown key"),
    ('migrate = true\npolicy = "online"', "unknown key"),
])
def test_lifecycle_order_is_checked_at_input(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[[step]]\nadd = "a:1G@1"\n[[step]]\n{steps}\n')


@pytest.mark.parametrize("value, message", [
    ('"cold0:512M@0"', "coldplug must be a list"),
    ('["cold0"]', "not ID:SIZE@NODE"),
    ('["c:64G@0"]', "exceeds maxmem"),
    ('["c:512M@0", "c:512M@1"]', "given twice"),  # QEMU's -device parsing
    ('["a:512M@0"]', "already in use"),  # the step's hot-add reuses a cold id
])
def test_bad_coldplug_is_named(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[machine]\ncoldplug = {value}\n[[step]]\nadd = "a:1G@1"\n')


def test_backend_keys_are_the_issues() -> None:
    """Issue 20's vocabulary for add steps, exactly."""
    from harness.scenario import BACKEND_KEYS

    assert set(BACKEND_KEYS) == {
        "backend", "hugepages", "share", "prealloc", "prealloc_threads", "host_nodes",
        "policy", "mem_path", "discard_data", "reserve", "dump", "merge"}


def test_virtio_mem_migrates_and_resizes_while_paused(tmp_path: Path) -> None:
    """A migrate with a virtio-mem plugged and a resize while paused are
    accepted (the resize is a model op; pause/migrate/resume are not)."""
    s = load(tmp_path, '''
[[step]]
add = "vmem0:4G@1"
device = "virtio-mem"
requested = "1G"
[[step]]
migrate = true
[[step]]
pause = true
[[step]]
resize = "vmem0"
requested = "2G"
[[step]]
resume = true
[[step]]
migrate = true
''')
    assert [st.action for st in s.steps] == ["add", "migrate", "pause", "resize", "resume",
                                            "migrate"]
    assert [st.is_model_op for st in s.steps] == [True, False, False, True, False, False]


def test_cold_plugged_dimms_take_backend_keys(tmp_path) -> None:
    """[machine].coldplug entries may be tables with an add step's backend keys
    (tp-qemu's cold-plugged memdevs); a file backend there is refused, with why."""
    import pytest

    from harness.errors import UsageError
    from harness.model.backend import BackendSpec
    from harness.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text('[machine]\nmemory = "4G,slots=4,maxmem=8G"\nnuma = "2G,2G"\n'
                    'coldplug = [{dimm = "c0:256M@0", backend = "memfd", share = true}, '
                    '"c1:128M@1"]\n[[step]]\nadd = "d0:128M@1"\n')
    s = load_scenario(path)
    c0, c1 = s.machine.coldplug
    assert c0.backend == BackendSpec("memfd", share=True) and c1.backend.kind == "ram"
    for bad, needle in (('{dimm = "c0:256M@0", backend = "file"}', "only for hot-added"),
                        ('{dimm = "c0:256M@0", colour = "red"}', "colour"),
                        ('{backend = "memfd"}', "dimm"), ("5", "a DIMM string or a table")):
        path.write_text(f'[machine]\ncoldplug = [{bad}]\n[[step]]\nadd = "d0:128M@1"\n')
        with pytest.raises(UsageError, match=needle):
            load_scenario(path)
