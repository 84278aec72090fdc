"""VMConfig -> QEMU argv: a pure function built from one helper per concern.

Nothing here starts a process or touches the file system, so every argv is
unit-tested (``tests/unit/test_argv.py``), including the seed's command
line.  Extra arguments come last so a user can override anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.qemu.config import DiskBoot, KernelBoot, VMConfig
from harness.qemu.options import opt_value
from harness.units import MiB


@dataclass(frozen=True)
class RuntimePaths:
    """Where a running VM keeps its files (inside its private 0700 dir)."""

    workdir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def qmp_transcript(self) -> Path:
        return self.workdir / "qmp.jsonl"

    @property
    def migration_socket(self) -> Path:
        """Where a migration destination listens (``-incoming unix:``): in
        the private 0700 work dir, so only this user can connect."""
        return self.workdir / "migrate.sock"


def _mib(n: int) -> str:
    return f"{n >> 20}M"


def machine_args(cfg: VMConfig) -> list[str]:
    # debug-threads=on names QEMU's threads (prealloc's "touch_pages", harness.host.checks)
    return ["-machine", cfg.machine, "-name",
            f"memhp-{cfg.name},process=memhp-{cfg.name},debug-threads=on"]


def accel_args(cfg: VMConfig) -> list[str]:
    if cfg.accel == "kvm":
        return ["-accel", "kvm", "-cpu", cfg.cpu_model()]
    # Multi-threaded TCG: one host thread per vCPU.
    return ["-accel", "tcg,thread=multi", "-cpu", cfg.cpu_model()]


def smp_args(cfg: VMConfig) -> list[str]:
    # One socket per vCPU so that each can be put in a NUMA node explicitly
    # (QEMU 7.2 deprecates the implicit CPU-to-node mapping).
    return ["-smp", f"{cfg.smp},sockets={cfg.smp},cores=1,threads=1"]


def memory_args(cfg: VMConfig) -> list[str]:
    spec = _mib(cfg.memory)
    if cfg.slots:
        spec += f",slots={cfg.slots}"
    if cfg.maxmem:
        # bare bytes when not whole MiB (QEMU takes maxmem= as a plain size)
        spec += f",maxmem={_mib(cfg.maxmem) if cfg.maxmem % MiB == 0 else cfg.maxmem}"
    return ["-m", spec]


def numa_args(cfg: VMConfig) -> list[str]:
    """One ``memory-backend-ram`` per node, as in the seed command line."""
    args: list[str] = []
    for node, size in enumerate(cfg.numa):
        if size == 0:  # a memoryless node: only hot-added memory will populate it
            args += ["-numa", f"node,nodeid={node}"]
            continue
        args += ["-object", f"memory-backend-ram,id=mem{node},size={_mib(size)}"]
        args += ["-numa", f"node,nodeid={node},memdev=mem{node}"]
    if cfg.numa:
        for cpu in range(cfg.smp):
            args += ["-numa", f"cpu,node-id={cpu % len(cfg.numa)},socket-id={cpu}"]
    return args


def boot_args(cfg: VMConfig) -> list[str]:
    boot = cfg.boot
    # the machine's firmware: virt's UEFI loads the -kernel QEMU hands it (fw_cfg)
    firmware = ["-bios", str(cfg.firmware)] if cfg.firmware else []
    if boot is None:
        return firmware
    if isinstance(boot, KernelBoot):
        args = [*firmware, "-kernel", str(boot.kernel)]
        if boot.initrd is not None:
            args += ["-initrd", str(boot.initrd)]
        if boot.append:
            args += ["-append", " ".join(boot.append)]
        return args
    assert isinstance(boot, DiskBoot)
    # snapshot=on: writes go to a temporary overlay, the image is never modified.
    return [*firmware,
        "-drive",
        f"file={opt_value(boot.image)},format={boot.format},if=virtio,snapshot=on",
    ]


def fw_cfg_args(cfg: VMConfig) -> list[str]:
    args: list[str] = []
    for item in cfg.fw_cfg:
        args += ["-fw_cfg", f"name={opt_value(item.name)},file={opt_value(item.path)}"]
    return args


def net_args(cfg: VMConfig) -> list[str]:
    if cfg.ssh_port is None:
        return []
    # hostfwd bound to 127.0.0.1 only: the guest's SSH is never reachable
    # from another host.
    return [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
    ]


def memory_device_args(cfg: VMConfig) -> list[str]:
    """``-object``/``-device`` per memory device, in order (QEMU realizes
    ``-device`` options in command-line order, so cold-plugged DIMMs take
    slots and addresses first-fit in this order unless pinned)."""
    args: list[str] = []
    for dev in cfg.memory_devices:
        args += dev.cli()
    return args


def incoming_args(cfg: VMConfig, paths: RuntimePaths) -> list[str]:
    if not cfg.incoming:
        return []
    return ["-incoming", f"unix:{paths.migration_socket}"]


def console_args(paths: RuntimePaths) -> list[str]:
    # A file never blocks QEMU, unlike a pipe nobody drains.  Appended to,
    # not truncated: a VM started from a saved state (harness.warm) finds
    # the saved boot's console there and continues it.
    return [
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"file,id=serial0,path={opt_value(paths.serial_log)},append=on",
        "-serial", "chardev:serial0",
    ]


def control_args(cfg: VMConfig, paths: RuntimePaths) -> list[str]:
    args = [
        "-qmp", f"unix:{opt_value(paths.qmp_socket)},server=on,wait=off",
        "-pidfile", str(paths.pidfile),
    ]
    if cfg.pvpanic:
        # The guest reports panics as a QMP GUEST_PANICKED event.
        args += ["-device", "pvpanic"]
    return args


def build_argv(cfg: VMConfig, paths: RuntimePaths) -> list[str]:
    """The complete QEMU command line for ``cfg``."""
    return [
        cfg.qemu_binary,
        *machine_args(cfg),
        *accel_args(cfg),
        *smp_args(cfg),
        *memory_args(cfg),
        *numa_args(cfg),
        *boot_args(cfg),
        *fw_cfg_args(cfg),
        *net_args(cfg),
        *memory_device_args(cfg),
        *console_args(paths),
        *control_args(cfg, paths),
        *incoming_args(cfg, paths),
        *cfg.extra_args,
    ]
