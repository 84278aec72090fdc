"""The kernel-policy cases on Debian's 6.12 generic kernel (bookworm-
backports), booted on Debian's QEMU 10.0 (which boots 6.12 reliably under
TCG; QEMU 7.2 does not, see conftest.py).  Same cases, same model, other
kernel: where 6.12 behaves differently (memmap_on_memory on every block,
auto-online by default), the model's policy inputs and version rules say
so, and the guest agrees."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from harness.calibrate.cases import CASES, Case
from harness.errors import HarnessError
from harness.launch import ResolvedGuest, launch_vm
from harness.scenario import build_scenario
from harness.testing import assert_passed, run_steps

pytestmark = [pytest.mark.vm]


@pytest.fixture(scope="session")
def qemu_10() -> tuple[str, tuple[int, int]]:
    from harness.qemu.fetch import resolve_qemu

    try:
        return resolve_qemu("debian:10.0"), (10, 0)
    except HarnessError as exc:
        pytest.skip(f"Debian's QEMU 10.0 could not be fetched: {exc}")


@pytest.fixture
def vm_612(image_612: Any, qemu_10: tuple[str, tuple[int, int]],
           request: pytest.FixtureRequest) -> Iterator[Any]:
    binary, version = qemu_10
    with ExitStack() as stack:
        def boot(numa: str = "3G,3G", append: tuple[str, ...] = ()) -> Any:
            scenario = build_scenario(name="k612", machine="pc",
                                      memory="6G,slots=32,maxmem=32G", numa=numa, steps=[],
                                      append=append, qemu_version=version)
            vm, _ = stack.enter_context(launch_vm(
                scenario, ResolvedGuest(image=image_612), accel="tcg", qemu_binary=binary,
                name="k612"))
            vm.scenario = scenario
            return vm
        yield boot


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_on_612(case: Case, vm_612: Any, request: pytest.FixtureRequest) -> None:
    vm = vm_612(**case.machine)
    results = run_steps(vm, case.steps, request)
    assert_passed(results)
    case.check(results)
    assert vm.guest.uname_r().startswith("6.12.")
