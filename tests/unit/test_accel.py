"""Accelerator choice.  The prober is injected: these test the decision
logic and the per-boot cache (the real probe is exercised by
tests/integration/test_accel_probe.py)."""

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.qemu.accel import (
    KvmVerdict,
    choose_accel,
    kvm_device_problem,
    kvm_probe_argv,
)


def test_probe_argv_boots_the_kernel_under_kvm_and_exits_on_panic() -> None:
    argv = kvm_probe_argv("qemu-system-x86_64", Path("/k"), Path("/s.log"))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-kernel") + 1] == "/k"
    assert "-no-reboot" in argv
    assert "panic=-1" in argv[argv.index("-append") + 1]


def test_missing_device_is_reported(tmp_path: Path) -> None:
    assert "does not exist" in (kvm_device_problem(tmp_path / "kvm") or "")


def test_tcg_forced_never_probes(tmp_path: Path) -> None:
    def boom(q: str, k: Path) -> KvmVerdict:
        raise AssertionError("probed")

    choice = choose_accel("tcg", qemu_binary="q", kernel=tmp_path, cache_dir=None, prober=boom)
    assert choice.accel == "tcg"


def test_kvm_forced_without_device_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="KVM requested"):
        choose_accel("kvm", qemu_binary="q", kernel=None, cache_dir=None,
                     dev_kvm=tmp_path / "nokvm")


def test_unknown_accel_is_refused() -> None:
    with pytest.raises(UsageError, match="hvf"):
        choose_accel("hvf", qemu_binary="q", kernel=None, cache_dir=None)


def test_auto_falls_back_to_tcg_with_the_probe_reason_and_caches_per_boot(tmp_path: Path) -> None:
    calls: list[str] = []
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")

    def fake_probe(q: str, k: Path) -> KvmVerdict:  # fake: pure decision logic
        calls.append(q)
        return KvmVerdict(False, "guest hung")

    dev = tmp_path / "kvm"  # stands in for an openable /dev/kvm
    dev.touch()
    kw = dict(qemu_binary="q", kernel=tmp_path, cache_dir=tmp_path / "c",
              boot_id_file=boot_id, prober=fake_probe, dev_kvm=dev)
    first = choose_accel("auto", **kw)
    second = choose_accel("auto", **kw)
    assert first.accel == second.accel == "tcg"
    assert "guest hung" in first.reason and "cached" in second.reason
    assert len(calls) == 1
    boot_id.write_text("boot-2\n")  # a new host boot probes again
    choose_accel("auto", **kw)
    assert len(calls) == 2


def test_auto_picks_kvm_when_the_probe_boots(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    choice = choose_accel("auto", qemu_binary="q", kernel=tmp_path, cache_dir=None,
                          dev_kvm=dev, prober=lambda q, k: KvmVerdict(True, "booted in 0.8s"))
    assert choice.accel == "kvm" and "0.8s" in choice.reason


def test_arm64_probe_boots_on_virt_with_the_pl011_console() -> None:
    """On an aarch64 host the probe boots the arm64 kernel straight from
    -kernel on virt (no firmware needed to reach the root-fs panic)."""
    argv = kvm_probe_argv("qemu-system-aarch64", Path("/Image"), Path("/s.log"), "aarch64")
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "console=ttyAMA0" in argv[argv.index("-append") + 1]


def _never(*_: object) -> KvmVerdict:
    raise AssertionError("a guest of another architecture was probed under KVM")


def test_another_architectures_guest_is_tcg_with_the_reason(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")  # opens: only the architecture can rule KVM out
    choice = choose_accel("auto", qemu_binary="q", kernel=tmp_path, cache_dir=None,
                          dev_kvm=kvm, prober=_never, guest_arch="aarch64", host="x86_64")
    assert choice.accel == "tcg"
    assert "aarch64" in choice.reason and "x86_64" in choice.reason
    with pytest.raises(UsageError, match="KVM runs only guests of the host's architecture"):
        choose_accel("kvm", qemu_binary="q", kernel=tmp_path, cache_dir=None, dev_kvm=kvm,
                     prober=_never, guest_arch="aarch64", host="x86_64")


def test_an_arm64_host_probes_its_arm64_guest(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    seen: list[str] = []

    def prober(binary: str, kernel: Path) -> KvmVerdict:
        seen.append(binary)
        return KvmVerdict(True, "booted")

    choice = choose_accel("auto", qemu_binary="qemu-system-aarch64", kernel=tmp_path,
                          cache_dir=None, dev_kvm=kvm, prober=prober, guest_arch="aarch64",
                          host="aarch64")
    assert choice.accel == "kvm" and seen == ["qemu-system-aarch64"]
