"""The real KVM probe on this host: whatever the verdict, it must come back
within its deadline with a reason (on hosts where KVM cannot boot a guest
it must say so instead of hanging)."""

import shutil
import time
from pathlib import Path

import pytest

from harness.qemu.accel import DEFAULT_DEADLINE_S, kvm_device_problem, probe_kvm_boot


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_real_probe_returns_a_reasoned_verdict_within_deadline(default_kernel: Path) -> None:
    if kvm_device_problem() is not None:
        pytest.skip(f"KVM device unusable here: {kvm_device_problem()}")
    start = time.monotonic()
    verdict = probe_kvm_boot("qemu-system-x86_64", default_kernel, deadline_s=10.0)
    assert time.monotonic() - start < 10.0 + 5.0
    assert verdict.reason
    if verdict.works:
        assert "booted under KVM" in verdict.reason
    else:
        assert "KVM" in verdict.reason
    assert DEFAULT_DEADLINE_S > 0
