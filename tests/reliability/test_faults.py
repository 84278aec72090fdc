"""Faults provoked for real: each must end fast, clearly and cleanly."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.errors import GuestPanic, QemuExited, VMError

pytestmark = [pytest.mark.vm]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


def test_qemu_killed_mid_run_is_reported_within_seconds(memhp_vm_factory) -> None:
    vm = memhp_vm_factory(memory="2G,slots=4,maxmem=4G", numa="1G,1G")
    workdir = vm.workdir
    os.kill(vm.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(QemuExited) as info:
        vm.hot_add("d0", 128 << 20, 0)
    assert time.monotonic() - start < 5
    assert "QEMU exited (signal 9)" in str(info.value)
    assert "serial console" in str(info.value)  # the tail comes with it
    vm.stop()
    assert workdir is not None and not workdir.exists()


def test_guest_panic_is_detected_with_the_panic_text(memhp_vm_factory) -> None:
    vm = memhp_vm_factory(memory="2G,slots=4,maxmem=4G", numa="1G,1G")
    with pytest.raises((GuestPanic, VMError)):
        vm.ssh(["sh", "-c", "echo c > /proc/sysrq-trigger"], timeout=20)
    start = time.monotonic()
    with pytest.raises(GuestPanic) as info:
        vm.wait_for_console("this line never comes", what="a line that never comes",
                            timeout=60)
    assert time.monotonic() - start < 10
    assert "Kernel panic - not syncing" in str(info.value)


def test_private_workdir_socket_and_loopback_port(memhp_vm) -> None:
    """QMP socket 0600 in a 0700 dir of ours; SSH forwarded on 127.0.0.1 only."""
    wd = memhp_vm.workdir
    st = wd.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    sock = memhp_vm.paths.qmp_socket
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    port = memhp_vm.config.ssh_port
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            listening.append(addr)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
    for key in (wd / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _memhp_qemus(parent: int | None = None) -> set[int]:
    """memhp's QEMUs (by their -name), only the children of ``parent`` if given
    (other xdist workers start QEMUs of their own meanwhile)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(b"memhp-") for a in cmd) and b"-name" in cmd \
                    and (parent is None or _ppid(int(d.name)) == parent):
                out.add(int(d.name))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_memhp_run_ends_qemu_and_cleans_up(tmp_path: Path, sig: int,
                                                        memhp_guest_image) -> None:
    """Ctrl-C / SIGTERM during boot: exit 130, every QEMU ended, no work dir left."""
    short = Path(tempfile.mkdtemp(prefix="mi-", dir="/tmp"))  # short: the work dir goes here
    env = dict(os.environ, TMPDIR=str(short), XDG_RUNTIME_DIR="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--accel", "tcg"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _memhp_qemus(proc.pid):
        time.sleep(0.05)
    started = _memhp_qemus(proc.pid)
    assert started, "memhp run never started QEMU"
    time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    for pid in started:
        assert not _alive(pid)
    left = [p for p in short.iterdir() if p.name.startswith("memhp-")]
    assert left == []
    short.rmdir()
