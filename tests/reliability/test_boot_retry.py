"""A boot that hangs is retried once with a fresh QEMU, and reported.

The hang is real in the sense that matters: a real QEMU booting the real
guest that has not shown its ready marker by the boot deadline.  The
deadline is what the test shortens (0.3 s, well before any guest can reach
/init), since a guest that hangs on demand and then boots does not exist."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import WaitTimeout
from harness.launch import vm_config
from harness.qemu.vm import VM, Timeouts
from harness.scenario import build_scenario

pytestmark = [pytest.mark.vm]

TOO_SHORT_S = 0.3


@pytest.fixture
def make_vm(memhp_resolved_guest, memhp_accel, memhp_settings,
            tmp_path: Path) -> Iterator:
    made: list[VM] = []

    def make(name: str, boot_s: float | None = None) -> VM:
        if memhp_resolved_guest.image is None:
            pytest.skip("needs the default guest or --memhp-kernel (a --memhp-disk "
                        "guest has no ready marker to wait for)")
        scenario = build_scenario(name=name, machine="pc", memory="2G,slots=4,maxmem=4G",
                                  numa="1G,1G", steps=[])
        cfg = vm_config(scenario, memhp_resolved_guest, accel=memhp_accel.accel,
                        qemu_binary=memhp_settings.qemu, name=f"{name}-{os.getpid()}")
        timeouts = Timeouts.for_accel(memhp_accel.accel)
        if boot_s is not None:
            timeouts = Timeouts(scale=1.0, boot=boot_s)
        vm = VM(cfg, image=memhp_resolved_guest.image, timeouts=timeouts,
                artifacts_dir=tmp_path / "artifacts", boot_attempts=2)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.stop()


def _record_pids(vm: VM) -> list[int]:
    pids: list[int] = []
    launch = vm.launch

    def launch_and_record(*args, **kwargs) -> None:
        launch(*args, **kwargs)
        assert vm.pid is not None
        pids.append(vm.pid)

    vm.launch = launch_and_record  # type: ignore[method-assign]
    return pids


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in Path(
        f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]


def test_every_boot_hangs_error_names_cpus_and_attempts(make_vm) -> None:
    vm = make_vm("hangs", boot_s=TOO_SHORT_S)
    pids = _record_pids(vm)
    with pytest.raises(WaitTimeout) as info, vm:
        pass
    text = str(info.value)
    assert "waiting for the guest's ready marker" in text
    assert re.search(r"QEMU running; CPU0 [ER]IP=[0-9a-f]+.*, CPU1 [ER]IP=", text)  # -smp 2
    assert "boot attempt 2 of 2: every one hung" in text
    assert [h["attempt"] for h in vm.boot_retries] == [1, 2]
    assert len(pids) == 2 and len(set(pids)) == 2
    assert all(_gone(pid) for pid in pids)
    assert vm.workdir is None  # both work dirs removed
    # the first attempt's files are kept beside the failed boot's
    kept = vm.artifacts_dir / vm.config.name
    assert (kept / "boot-attempt-1" / "argv.txt").is_file()
    assert (kept / "argv.txt").is_file()


def test_a_hung_boot_is_retried_and_the_second_boot_serves(make_vm) -> None:
    vm = make_vm("retried")
    pids = _record_pids(vm)
    wait = vm.wait_for_console
    calls = []

    def first_deadline_too_short(needle: str, *, what: str, timeout: float | None = None):
        calls.append(what)
        return wait(needle, what=what, timeout=TOO_SHORT_S if len(calls) == 1 else timeout)

    vm.wait_for_console = first_deadline_too_short  # type: ignore[method-assign]
    with vm:
        assert len(vm.boot_retries) == 1
        hang = vm.boot_retries[0]
        assert hang["attempt"] == 1 and "ready marker" in hang["error"]
        assert re.match(r"QEMU running; CPU0 [ER]IP=[0-9a-f]+", hang["cpus"])
        assert len(pids) == 2 and _gone(pids[0]) and vm.pid == pids[1]
        assert vm.ssh(["cat", "/proc/sys/kernel/ostype"]).stdout.strip() == "Linux"
        assert (vm.artifacts_dir / vm.config.name / "boot-attempt-1" / "argv.txt").is_file()
    assert _gone(pids[1])


def test_a_hung_boot_after_a_reset_is_reset_again(make_vm) -> None:
    vm = make_vm("reset")
    with vm:
        normal = vm.timeouts
        vm.timeouts = Timeouts(scale=1.0, boot=TOO_SHORT_S)
        reset = vm.system_reset
        marks: list[int] = []

        def reset_then_normal_deadline() -> int:
            marks.append(reset())
            if len(marks) == 2:
                vm.timeouts = normal
            return marks[-1]

        vm.system_reset = reset_then_normal_deadline  # type: ignore[method-assign]
        vm.reboot()
        assert len(marks) == 2
        assert [(h["attempt"], h["when"]) for h in vm.boot_retries] == [(1, "after a reset")]
        assert vm.ssh(["cat", "/proc/sys/kernel/ostype"]).stdout.strip() == "Linux"
        resets = [ev for ev in vm.qmp.events()
                  if ev.name == "RESET" and ev.data.get("reason") == "host-qmp-system-reset"]
        assert len(resets) == 2  # the firmware's own (guest-reset) ones aside
