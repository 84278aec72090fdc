"""QEMU argv is a pure function of VMConfig: checked without starting QEMU."""

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.qemu.argv import RuntimePaths, build_argv
from harness.qemu.config import DiskBoot, FwCfgFile, KernelBoot, VMConfig
from harness.units import GiB

PATHS = RuntimePaths(Path("/run/memhp-x"))


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_seed_command_line_memory_and_numa() -> None:
    """The seed's -m 6G,slots=32,maxmem=32G with two 3G nodes on RAM backends."""
    cfg = VMConfig(name="seed", memory=6 * GiB, slots=32, maxmem=32 * GiB,
                   numa=(3 * GiB, 3 * GiB), smp=8, accel="kvm")
    argv = build_argv(cfg, PATHS)
    assert _pairs(argv, "-m") == ["6144M,slots=32,maxmem=32768M"]
    assert _pairs(argv, "-object") == [
        "memory-backend-ram,id=mem0,size=3072M", "memory-backend-ram,id=mem1,size=3072M",
    ]
    numa = _pairs(argv, "-numa")
    assert numa[:2] == ["node,nodeid=0,memdev=mem0", "node,nodeid=1,memdev=mem1"]
    # every vCPU is placed in a node, round robin
    assert numa[2:] == [f"cpu,node-id={c % 2},socket-id={c}" for c in range(8)]
    assert _pairs(argv, "-accel") == ["kvm"]
    assert _pairs(argv, "-cpu") == ["host"]
    assert _pairs(argv, "-smp") == ["8,sockets=8,cores=1,threads=1"]


def test_tcg_uses_multithreaded_tcg_and_max_cpu() -> None:
    argv = build_argv(VMConfig(name="t", accel="tcg"), PATHS)
    assert _pairs(argv, "-accel") == ["tcg,thread=multi"]
    assert _pairs(argv, "-cpu") == ["max"]
    assert "-enable-kvm" not in argv


def test_hostfwd_binds_loopback_only_and_qmp_is_a_unix_socket() -> None:
    argv = build_argv(VMConfig(name="n", ssh_port=5555), PATHS)
    (netdev,) = _pairs(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:5555-:22" in netdev
    assert _pairs(argv, "-qmp") == [f"unix:{PATHS.qmp_socket},server=on,wait=off"]
    assert _pairs(argv, "-serial") == ["chardev:serial0"]
    assert _pairs(argv, "-chardev") == [f"file,id=serial0,path={PATHS.serial_log},append=on"]
    assert _pairs(argv, "-name")[0].startswith("memhp-n")


def test_no_hotplug_region_without_slots() -> None:
    argv = build_argv(VMConfig(name="p", memory=2 * GiB, slots=0, maxmem=0, numa=()), PATHS)
    assert _pairs(argv, "-m") == ["2048M"]
    assert "-numa" not in argv


def test_kernel_boot_fw_cfg_and_extra_args_last() -> None:
    cfg = VMConfig(
        name="k",
        boot=KernelBoot(Path("/k/bzImage"), Path("/k/initrd"), ("console=ttyS0", "quiet")),
        fw_cfg=(FwCfgFile("opt/memhp/host_key", Path("/w/keys/host")),),
        extra_args=("-device", "foo"),
    )
    argv = build_argv(cfg, PATHS)
    assert _pairs(argv, "-kernel") == ["/k/bzImage"]
    assert _pairs(argv, "-initrd") == ["/k/initrd"]
    assert _pairs(argv, "-append") == ["console=ttyS0 quiet"]
    assert _pairs(argv, "-fw_cfg") == ["name=opt/memhp/host_key,file=/w/keys/host"]
    assert argv[-2:] == ["-device", "foo"]


def test_disk_is_opened_in_snapshot_mode() -> None:
    argv = build_argv(VMConfig(name="d", boot=DiskBoot(Path("/img.qcow2"))), PATHS)
    (drive,) = _pairs(argv, "-drive")
    assert "snapshot=on" in drive and "format=qcow2" in drive


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "bad name"}, "VM name"),
        ({"name": "x", "machine": "microvm"}, "machine type"),
        ({"name": "x", "numa": (GiB, GiB)}, "do not add up"),
        ({"name": "x", "maxmem": 0}, "slots= needs maxmem="),
        ({"name": "x", "slots": 300}, "slots=300"),
        ({"name": "x", "maxmem": GiB}, "below the boot memory"),
        ({"name": "x", "smp": 0}, "smp=0"),
    ],
)
def test_bad_configs_are_refused_with_the_value_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        VMConfig(**kwargs)


def test_versioned_machine_type_and_maxmem_without_slots() -> None:
    argv = build_argv(VMConfig(name="t", machine="pc-q35-7.0", memory=2 * GiB, slots=0,
                               maxmem=4 * GiB, numa=()), PATHS)
    assert _pairs(argv, "-machine") == ["pc-q35-7.0"]
    assert _pairs(argv, "-m") == ["2048M,maxmem=4096M"]  # QEMU starts; DIMMs are refused
    with pytest.raises(UsageError, match="version 1.0 is not modelled"):
        VMConfig(name="t", machine="pc-q35-1.0")



def test_debian_qemu_launcher_passes_both_firmware_dirs(tmp_path: Path) -> None:
    from harness.qemu.fetch import launcher_text, missing_libraries, needed_libraries

    text = launcher_text(tmp_path / "debian-10.0.2")
    assert text.startswith("#!/bin/sh\nexec ")
    assert f"-L {tmp_path}/debian-10.0.2/usr/share/qemu" in text
    assert f"-L {tmp_path}/debian-10.0.2/usr/share/seabios" in text
    assert text.rstrip().endswith('"$@"')
    elf = (" 0x0000000000000001 (NEEDED)             Shared library: [libpixman-1.so.0]\n"
           " 0x0000000000000001 (NEEDED)             Shared library: [libfoo.so.9]\n")
    assert needed_libraries(elf) == ["libpixman-1.so.0", "libfoo.so.9"]
    ldconfig = "\tlibpixman-1.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libpixman-1.so.0\n"
    assert missing_libraries(needed_libraries(elf), ldconfig) == ["libfoo.so.9"]


def test_own_library_launcher_execs_the_unpacked_loader(tmp_path: Path) -> None:
    """debian:11.1's launcher: the unpacked ld.so runs the unpacked binary on
    the unpacked libraries only, modules from the root, firmware by -L; and
    exec keeps the PID memhp will kill (checked with a stand-in loader)."""
    import os
    import subprocess

    from harness.qemu.fetch import KNOWN, LOADER, launcher_text, unresolved_in_root

    assert KNOWN["11.1"].suite == "trixie-backports" and KNOWN["11.1"].own_libraries
    assert not KNOWN["10.0"].own_libraries  # 10.0 keeps the host's libraries
    root = tmp_path / "debian-11.1.3"
    text = launcher_text(root, own_libraries=True)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1] == f"QEMU_MODULE_DIR={root}/usr/lib/x86_64-linux-gnu/qemu"
    assert lines[2] == "export QEMU_MODULE_DIR"
    assert lines[3].startswith(f"exec {root}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "
                               f"--library-path {root}/usr/lib/x86_64-linux-gnu:"
                               f"{root}/lib/x86_64-linux-gnu:")
    assert f"{root}/usr/bin/qemu-system-x86_64 -L {root}/usr/share/qemu " \
           f"-L {root}/usr/share/seabios \"$@\"" in lines[3]
    assert "/usr/lib/x86_64-linux-gnu:/" not in lines[3].replace(str(root), "ROOT")
    # run it with a stand-in loader that reports its PID, environment and argv
    loader = root / LOADER
    loader.parent.mkdir(parents=True)
    loader.write_text('#!/bin/sh\necho "$$|$QEMU_MODULE_DIR|$*"\n')
    loader.chmod(0o755)
    launcher = root / "qemu-system-x86_64"
    launcher.write_text(text)
    launcher.chmod(0o755)
    proc = subprocess.Popen([str(launcher), "-S", "a b"], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "QEMU_MODULE_DIR"})
    out, _ = proc.communicate(timeout=10)
    pid, modules, argv = out.strip().split("|")
    assert int(pid) == proc.pid  # exec all the way: QEMU's PID is the launcher's
    assert modules == f"{root}/usr/lib/x86_64-linux-gnu/qemu"
    assert argv.endswith(f"-L {root}/usr/share/seabios -S a b")
    assert unresolved_in_root(["libc.so.6", "libglib-2.0.so.0"], {"libc.so.6"}) == [
        "libglib-2.0.so.0"]


def test_apt_simulation_lists_the_closure() -> None:
    from harness.apt import TRIXIE, Apt, parse_simulation

    out = ("NOTE: This is only a simulation!\n"
           "Inst gcc-14-base (14.2.0-19 Debian:13.8/stable [amd64])\n"
           "Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64]) []\n"
           "Inst qemu-system-x86 (1:11.1.3+ds-2~bpo13+1 Debian Backports:stable-backports "
           "[amd64])\nInst foo [1.0] (2.0 Debian:13.8/stable [amd64])\n"
           "Conf libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])\n")
    assert parse_simulation(out) == {"gcc-14-base": "14.2.0-19", "libc6": "2.41-12+deb13u5",
                                     "qemu-system-x86": "1:11.1.3+ds-2~bpo13+1", "foo": "2.0"}
    trixie = Apt(Path("/nonexistent-cache"), sources=TRIXIE)
    assert trixie.root == Path("/nonexistent-cache/apt-trixie")
    assert Apt(Path("/nonexistent-cache")).root == Path("/nonexistent-cache/apt")
    text = trixie._sources()
    assert "Suites: trixie trixie-updates trixie-backports\n" in text
    assert "Suites: trixie-security\n" in text and "bookworm" not in text
    with pytest.raises(UsageError):
        trixie._suite_args("bookworm-backports")


def test_unknown_debian_qemu_is_a_usage_error() -> None:
    from harness.qemu.fetch import resolve_qemu

    with pytest.raises(UsageError):
        resolve_qemu("debian:6.0")
    assert resolve_qemu("/opt/qemu/bin/qemu-system-x86_64") == "/opt/qemu/bin/qemu-system-x86_64"
