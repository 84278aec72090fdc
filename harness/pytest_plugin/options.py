"""The plugin's options: each ``--memhp-NAME`` has an ini twin
(``memhp_NAME``) and an environment variable (``MEMHP_NAME``), resolved
option > environment > ini into one :class:`Settings`; bad values raise
:class:`pytest.UsageError` before any test runs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.machines import MACHINES

_OPTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("kernel", "Guest kernel (bzImage) instead of the default guest's.", None),
    ("modules", "Modules tree for --memhp-kernel.", None),
    ("kernel-config", "Build config of --memhp-kernel (default: found beside it or IKCONFIG).",
     None),
    ("kernel-package", "Debian kernel package to boot, NAME[/SUITE], e.g. "
                       "linux-image-amd64/bookworm-backports (fetched, never installed).", None),
    ("disk", "Boot this disk image (snapshot mode) instead of kernel+initramfs.", None),
    ("ssh-key", "SSH private key for --memhp-disk.", None),
    ("ssh-host-key", "Public host key of the --memhp-disk guest to pin (else pinned on "
                     "first use).", None),
    ("ssh-user", "SSH user for --memhp-disk.", "root"),
    ("qemu", "QEMU binary, or debian:10.0 (fetched into memhp's cache, see README); "
             "default: the machine's (qemu-system-aarch64 for virt).", None),
    ("qemu-version", "Model this QEMU version (MAJOR.MINOR) instead of the one --memhp-qemu "
                     "reports, as memhp run --qemu-version.", None),
    ("machine", "Machine type (pc, q35 or virt: arm64) for tests that do not pin one "
                "(CI matrices).", "pc"),
    ("accel", "Accelerator: auto (probe KVM, fall back to TCG), kvm or tcg.", "auto"),
    ("artifacts", "Directory for the artifacts of failed tests.", "memhp-artifacts"),
    ("timeout-scale", "Multiply every VM timeout by this factor.", "1.0"),
    ("boot-attempts", "Boots in all when a VM's boot hangs (no ready marker by the deadline, "
                      "no panic); each hung boot is reported as a warning.", "2"),
    ("shard", "Run only shard I of N of the VM tests, as I/N (deterministic).", None),
    ("cold-boot", "Always boot VMs: no warm start from a saved state of the same inputs "
                  "(true/false).", "false"),
    ("ktap", "Write the results as KTAP version 1 to this file (a test per test, a "
             "subtest per memhp step it ran).", None),
)


def _ini(name: str) -> str:
    return "memhp_" + name.replace("-", "_")


def _env(name: str) -> str:
    return "MEMHP_" + name.replace("-", "_").upper()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memhp", "memory hotplug VMs")
    for name, help_text, default in _OPTIONS:
        full = f"{help_text} (ini: {_ini(name)}, env: {_env(name)}; default: {default})"
        group.addoption(f"--memhp-{name}", dest=_ini(name), default=None, help=full)
        parser.addini(_ini(name), help=full, default=default)


@dataclass(frozen=True)
class Settings:
    kernel: Path | None
    modules: Path | None
    disk: Path | None
    ssh_key: Path | None
    ssh_host_key: Path | None
    ssh_user: str
    qemu: str
    accel: str
    artifacts: Path
    timeout_scale: float
    shard: tuple[int, int] | None
    machine: str = "pc"
    kernel_config: Path | None = None
    kernel_package: str | None = None
    qemu_version: tuple[int, int] | None = None  # the binary's, for the model's rules
    cold_boot: bool = False  # never start VMs from a saved state (harness.warm)
    boot_attempts: int = 2  # boots in all when one hangs (harness.qemu.vm.VM.boot)
    # --memhp-qemu as given ("" for the machine's own): a test on a machine of
    # another architecture (virt in an x86 session) takes debian:X.Y for its
    # arch, else that machine's own binary
    qemu_spec: str = ""


SETTINGS_KEY = pytest.StashKey[Settings]()


def _resolve(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(_ini(name))
    if value is None:
        value = os.environ.get(_env(name))
    if value is None:
        value = config.getini(_ini(name)) or None
    return value


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _parse_attempts(raw: str) -> int:
    # ASCII digits only: '²'.isdigit() is True, and int('²') raises.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10:
        raise pytest.UsageError(
            f"--memhp-boot-attempts={raw!r}: give a whole number from 1 to 10")
    return int(raw)


def resolve_settings(config: pytest.Config) -> Settings:
    accel = _resolve(config, "accel") or "auto"
    if accel not in ("auto", "kvm", "tcg"):
        raise pytest.UsageError(f"--memhp-accel={accel!r}: use auto, kvm or tcg")
    raw_scale = _resolve(config, "timeout-scale") or "1.0"
    try:
        scale = float(raw_scale)
    except ValueError:
        raise pytest.UsageError(
            f"--memhp-timeout-scale={raw_scale!r} is not a number (e.g. 2.5)") from None
    if not 0.1 <= scale <= 100:
        raise pytest.UsageError(f"--memhp-timeout-scale={scale} is outside 0.1..100")
    shard = None
    raw_shard = _resolve(config, "shard")
    if raw_shard:
        m = re.fullmatch(r"(\d+)/(\d+)", raw_shard)
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise pytest.UsageError(
                f"--memhp-shard={raw_shard!r}: give I/N with 1 <= I <= N, e.g. 2/4")
        shard = (int(m.group(1)), int(m.group(2)))
    machine = _resolve(config, "machine") or "pc"
    if machine not in MACHINES:
        raise pytest.UsageError(f"--memhp-machine={machine!r}: use one of "
                                f"{', '.join(MACHINES)}")
    qemu_spec = _resolve(config, "qemu") or ""
    qemu, qemu_ver = resolve_qemu_for(qemu_spec, machine)
    raw_version = _resolve(config, "qemu-version")
    if raw_version:
        from harness.model.qemu_rules import parse_qemu_version

        try:
            qemu_ver = parse_qemu_version(raw_version)
        except HarnessError as exc:
            raise pytest.UsageError(f"--memhp-qemu-version={raw_version!r}: {exc}") from exc
    attempts = _parse_attempts(_resolve(config, "boot-attempts") or "2")
    raw_cold = (_resolve(config, "cold-boot") or "false").strip().lower()
    if raw_cold not in ("true", "false", "1", "0", "yes", "no"):
        raise pytest.UsageError(f"--memhp-cold-boot={raw_cold!r}: use true or false")
    settings = Settings(
        machine=machine,
        kernel=_path(_resolve(config, "kernel")), modules=_path(_resolve(config, "modules")),
        disk=_path(_resolve(config, "disk")),
        ssh_key=_path(_resolve(config, "ssh-key")),
        ssh_host_key=_path(_resolve(config, "ssh-host-key")),
        ssh_user=_resolve(config, "ssh-user") or "root",
        qemu=qemu, accel=accel,
        artifacts=_path(_resolve(config, "artifacts")) or Path("memhp-artifacts"),
        timeout_scale=scale, shard=shard, qemu_version=qemu_ver,
        kernel_config=_path(_resolve(config, "kernel-config")),
        kernel_package=_resolve(config, "kernel-package"),
        cold_boot=raw_cold in ("true", "1", "yes"),
        boot_attempts=attempts, qemu_spec=qemu_spec,
    )
    if settings.disk is not None and settings.kernel is not None:
        raise pytest.UsageError("--memhp-disk and --memhp-kernel cannot be combined")
    if settings.disk is not None and settings.ssh_key is None:
        raise pytest.UsageError("--memhp-disk needs --memhp-ssh-key")
    for label, path in (("kernel", settings.kernel), ("disk", settings.disk)):
        if path is not None and not path.is_file():
            raise pytest.UsageError(f"--memhp-{label}={str(path)!r} is not a file")
    return settings


def resolve_qemu_for(spec: str, machine: str) -> tuple[str, tuple[int, int] | None]:
    """``--memhp-qemu`` as the CLI's ``--qemu``, for a VM of ``machine``: a
    binary, or debian:X.Y fetched for the machine's architecture
    (harness.qemu.fetch); "" is the machine's own binary.  With its version
    for the model's rules."""
    from harness.errors import HarnessError
    from harness.machines import machine as board
    from harness.qemu.fetch import resolve_qemu
    from harness.qemu.version import qemu_version

    text = spec or board(machine).qemu_binary
    try:
        binary = resolve_qemu(text, arch=board(machine).arch)
    except HarnessError as exc:
        raise pytest.UsageError(f"--memhp-qemu={text!r}: {exc}") from exc
    detected = qemu_version(binary)
    parts = detected.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return binary, None
    return binary, (int(parts[0]), int(parts[1]))
