"""What the plugin reports: the model's standing in the header, and on a
failed test the serial tail, ``dmesg``, the QMP transcript tail and the
model-vs-guest mismatches (report sections and JUnit properties); a
retried boot as a warning."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from harness.pytest_plugin.options import SETTINGS_KEY, _resolve

BEHIND_KEY = pytest.StashKey[list[str]]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The model's standing for the run's QEMU: extrapolated or calibrated."""
    from harness.calibrate import model_status

    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or settings.qemu_version is None:
        return []
    version = ".".join(map(str, settings.qemu_version))
    status = model_status(qemu_binary=settings.qemu, qemu_version=version)
    config.stash[BEHIND_KEY] = status.behind()
    return [f"memhp: {line}" for line in status.lines()]


VMS_KEY = pytest.StashKey[list[Any]]()


MISMATCH_KEY = pytest.StashKey[list[Any]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if _resolve(item.config, "ktap"):
        from harness.pytest_plugin.ktap import record

        record(item, report)
    if report.when != "call" or not report.failed:
        return report
    for vm in item.stash.get(VMS_KEY, []):
        vm.mark_failed()
        tail = vm.serial_tail(60)
        if tail:
            report.sections.append((f"memhp serial console ({vm.config.name})", tail))
            item.user_properties.append((f"memhp.serial_tail.{vm.config.name}", tail))
        dmesg = _dmesg(vm)
        if dmesg:
            report.sections.append((f"memhp dmesg ({vm.config.name})", dmesg))
            item.user_properties.append((f"memhp.dmesg.{vm.config.name}", dmesg))
        qmp = _qmp_tail(vm)
        if qmp:
            report.sections.append((f"memhp QMP transcript ({vm.config.name})", qmp))
            item.user_properties.append((f"memhp.qmp.{vm.config.name}", qmp))
        item.user_properties.append((f"memhp.artifacts.{vm.config.name}",
                                     str(vm.artifacts_dir / vm.config.name)
                                     if vm.artifacts_dir else ""))
    mism = item.stash.get(MISMATCH_KEY, [])
    if mism:
        text = "\n".join([str(m) for m in mism] + item.config.stash.get(BEHIND_KEY, []))
        report.sections.append(("memhp model vs guest", text))
        item.user_properties.append(("memhp.mismatches", text))
    return report


def _dmesg(vm: Any) -> str:
    if vm.shell is None:
        return ""
    try:
        res = vm.shell.run(["dmesg"], timeout=10, check=False)
    except Exception:  # noqa: BLE001 - the VM may be the thing that broke
        return ""
    return "\n".join(res.stdout.splitlines()[-80:])


def _qmp_tail(vm: Any) -> str:
    if vm.paths is None:
        return ""
    try:
        lines = vm.paths.qmp_transcript.read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-40:])


def record_mismatches(request: pytest.FixtureRequest, mismatches: list[Any]) -> None:
    """Let a test attach model-vs-guest mismatches to its failure report."""
    request.node.stash.setdefault(MISMATCH_KEY, []).extend(mismatches)


class MemhpBootRetry(pytest.PytestWarning):
    """A VM's boot hung and was retried (see VM.boot): shown in the warnings
    summary, so a passing run still says so."""


def warn_boot_retries(item: pytest.Item, vm: Any) -> None:
    for n, hang in enumerate(vm.boot_retries, 1):
        text = (f"{vm.config.name}: {hang['when']}, boot attempt {hang['attempt']} hung "
                f"after {hang['seconds']:.0f}s ({hang['cpus']})")
        item.user_properties.append((f"memhp.boot_retry.{vm.config.name}.{n}",
                                     f"{text}\n{hang['serial_tail']}"))
        item.warn(MemhpBootRetry(text))
