"""One run of a scenario on one guest, start to finish, as a RunResult.

Shared by ``memhp run``, ``memhp compare`` and ``memhp bisect``.  Errors
after the plan was accepted do not escape: they are recorded in the result
with the phase they happened in (``launch``/``boot``/``ssh`` mean the guest
never came up, which ``memhp bisect`` maps to "cannot test").
Ctrl-C does escape, after the VM was ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from harness.calibrate import ModelStatus, model_status
from harness.errors import HarnessError
from harness.launch import ResolvedGuest, launch_vm
from harness.qemu.version import qemu_version
from harness.run.exec import grade_output, run_exec
from harness.run.results import RunResult, StepResult, layout_json
from harness.run.runner import Runner
from harness.scenario import Scenario

log = logging.getLogger(__name__)

BOOT_PHASES = ("launch", "boot", "ssh", "wait", "guest", "qemu")


def execute(
    scenario: Scenario,
    guest: ResolvedGuest,
    *,
    accel: str = "auto",
    qemu_binary: str | None = None,
    keep: Path | None = None,
    artifacts_on_failure: Path | None = Path("memhp-artifacts"),
    timeout_scale: float = 1.0,
    on_boot: Callable[[RunResult], None] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    warm: bool = False,
    boot_attempts: int = 2,
    on_model: Callable[[ModelStatus], None] | None = None,
    allowed_mem_paths: tuple[Path, ...] | None = None,
) -> RunResult:
    """Run ``scenario`` on ``guest``.  ``warm``: start from a saved state of
    the same inputs when one exists (:mod:`harness.warm`); off by default,
    so ``compare`` and ``bisect`` boot the kernel under test for real.
    ``on_model``: called before the VM starts with the model's standing
    (extrapolated rules, calibrations) for the run's first lines.
    ``allowed_mem_paths``: the directories a scenario's file backends may
    name (harness.host.paths), checked again before QEMU opens one."""
    t0 = time.monotonic()
    if qemu_binary is None:  # the machine's own: qemu-system-aarch64 for virt
        from harness.machines import machine

        qemu_binary = machine(scenario.machine.machine).qemu_binary
    result = RunResult(scenario=scenario.name, accel="?", accel_reason="",
                       qemu_version=qemu_version(qemu_binary), kernel=guest.describe(),
                       layout=layout_json(scenario.predict())
                       | {"node_ram": list(scenario.machine.node_boot_bytes())})
    image = guest.image
    status = model_status(qemu_binary=qemu_binary, qemu_version=result.qemu_version,
                          kernel_image=guest.kernel,
                          kernel_release=image.kernel_version if image is not None else None)
    result.model = status.to_json()
    if on_model:
        on_model(status)
    booted = False
    vm = None
    try:
        from harness.host.hugepages import reserved_for

        with reserved_for(scenario.adds("pc-dimm"),
                          copies=2 if scenario.migrates else 1) as pages, \
                launch_vm(scenario, guest, accel=accel, qemu_binary=qemu_binary, keep=keep,
                          artifacts_on_failure=artifacts_on_failure,
                          timeout_scale=timeout_scale, name=scenario.name,
                          warm=warm, boot_attempts=boot_attempts) as (vm, choice):
            if pages is not None:
                vm.hugetlbfs = dict(pages.mounts)
            vm.allowed_mem_paths = allowed_mem_paths
            booted = True
            result.accel, result.accel_reason = choice.accel, choice.reason
            result.timings.update(vm.timings)
            result.start = dict(vm.start_info)
            if vm.boot_retries:
                result.start["boot_retries"] = list(vm.boot_retries)
            if on_boot:
                on_boot(result)
            runner = Runner(scenario, vm, on_step=on_step)
            try:
                runner.run()
            finally:
                result.steps = runner.steps
                if vm.boot_retries:  # a boot after a reset step may have hung too
                    result.start["boot_retries"] = list(vm.boot_retries)
                if runner.policy is not None:
                    result.policy = runner.policy.to_json()
                if runner.kernel is not None and result.policy is not None:
                    result.policy["rules"] = runner.kernel.rules.name
                if image is None and runner.policy is not None:  # a --disk guest
                    status = _with_disk_kernel(status, runner.policy.version)
                    result.model = status.to_json()
            for s in runner.steps:
                result.timings[f"step{s.index}_s"] = s.seconds
            result.exec = run_exec(vm, scenario.exec_cmd, scenario.script)
            if result.exec is not None and runner.kernel is not None:
                result.exec.findings = grade_output(result.exec.output, scenario.exec_expect,
                                                    scenario.exec_forbid)
                result.exec.changes, result.exec.mismatches = runner.reconcile()
            result.splats = runner.boot_splats + runner.scan_log()
            if not result.passed:
                vm.mark_failed()
    except HarnessError as exc:
        result.error = {"kind": type(exc).__name__, "phase": exc.phase, "message": str(exc),
                        "booted": booted}
    finally:
        result.timings["total_s"] = time.monotonic() - t0
        if not result.passed and status.extrapolated:
            result.model = status.to_json() | {"behind": status.behind()}
        if vm is not None and vm.saved_artifacts is not None:
            result.artifacts = str(vm.saved_artifacts)
            save_map(result, Path(vm.saved_artifacts) / "memory-map.svg")
    return result


def _with_disk_kernel(status: ModelStatus, version: tuple[int, int]) -> ModelStatus:
    """``status`` plus the kernel a --disk guest turned out to run."""
    from harness.model.versions import kernel_extrapolation

    ext = kernel_extrapolation(version)
    if ext is not None and all(e.component != "kernel" for e in status.extrapolated):
        status.extrapolated.append(ext)
    return status


def save_map(result: RunResult, path: Path) -> Path | None:
    """Draw the run's memory map to ``path`` (and a PNG when possible)."""
    from harness.memmap import render_svg, svg_to_png

    if not result.steps:
        return None
    try:
        path.write_text(render_svg(result.to_json()))
    except OSError as exc:
        log.warning("cannot write the memory map %s: %s", path, exc)
        return None
    svg_to_png(path)
    result.map = str(path)
    return path


def never_booted(result: RunResult) -> bool:
    """The guest did not come up, for reasons before any hotplug step."""
    return result.error is not None and not result.error.get("booted", True)
