"""Faults provoked for real: each must end fast, clearly and cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import GuestPanic, QemuExited, QemuUnresponsive, VMError
from harness.testing import run_cli, start_cli

pytestmark = [pytest.mark.vm]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


@pytest.mark.fault
def test_qemu_killed_mid_run_is_reported_within_seconds(memhp_vm_factory) -> None:
    vm = memhp_vm_factory(memory="2G,slots=4,maxmem=4G", numa="1G,1G")
    workdir = vm.workdir
    os.kill(vm.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(QemuExited) as info:
        vm.hot_add("d0", 128 << 20, 0)
    assert time.monotonic() - start < 15  # a bounded grace, not a QMP timeout
    assert "QEMU exited (signal 9)" in str(info.value)
    assert "serial console" in str(info.value)  # the tail comes with it
    vm.stop()
    assert workdir is not None and not workdir.exists()


@pytest.mark.fault
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


def _default_sigint() -> None:  # runs in the child before exec
    # pytest may itself run with SIGINT ignored (nohup, a background job);
    # the child would inherit that and never see the Ctrl-C we send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_CWDS: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_run_cwds() -> Iterator[None]:
    yield
    while _CWDS:
        shutil.rmtree(_CWDS.pop(), ignore_errors=True)


def start_held_run(extra: list[str] = ()) -> tuple[subprocess.Popen[str], Path, list[str]]:
    """``memhp run`` held in a long ``--exec`` (it cannot finish by itself);
    returns once the exec runs in the guest (the last step's table was
    printed), with memhp's process, its private TMPDIR and the output so far."""
    short = Path(tempfile.mkdtemp(prefix="mi-", dir="/tmp"))  # short: the work dir goes here
    env = dict(os.environ, TMPDIR=str(short), XDG_RUNTIME_DIR="", PYTHONUNBUFFERED="1",
               COLUMNS="200")
    cwd = Path(tempfile.mkdtemp(prefix="mi-cwd-", dir="/tmp"))  # its ./memhp-artifacts
    _CWDS.append(cwd)
    proc = start_cli(
        "run", "--accel", "tcg",
        "--memory", "1G,slots=2,maxmem=2G", "--numa", "512M,512M", "--add", "d0:128M@1",
        "--exec", "sleep 600", *extra, env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:  # the exec starts right after step 2's table
        lines.append(line)
        if "step 2:" in line:
            return proc, short, lines
    proc.wait()
    raise AssertionError("memhp run ended before its exec:\n" + "".join(lines))


def _finish(proc: subprocess.Popen[str], lines: list[str], timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return "".join(lines) + out


@pytest.mark.fault
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_memhp_run_ends_qemu_and_cleans_up(sig: int, memhp_guest_image) -> None:
    """Ctrl-C / SIGTERM during the run's --exec: exit 130 within seconds,
    every QEMU ended, no work dir left."""
    proc, short, lines = start_held_run()
    started = _memhp_qemus(proc.pid)
    assert started, "memhp run has no QEMU while its exec runs"
    t0 = time.monotonic()
    proc.send_signal(sig)
    out = _finish(proc, lines, 60)
    assert proc.returncode == 130, out
    assert time.monotonic() - t0 < 20, out
    assert "interrupted" in out
    for pid in started:
        assert not _alive(pid)
    assert [p for p in short.iterdir() if p.name.startswith("memhp-")] == []
    short.rmdir()


@pytest.mark.fault
def test_stopped_qemu_ends_the_run_naming_the_cause(memhp_guest_image) -> None:
    """SIGSTOP of QEMU mid-run: memhp names it within seconds (not after
    every step's timeout), exits 1 and leaves nothing behind."""
    proc, short, lines = start_held_run()
    (qemu,) = _memhp_qemus(proc.pid)
    t0 = time.monotonic()
    os.kill(qemu, signal.SIGSTOP)
    try:
        out = _finish(proc, lines, 120)
    finally:
        if _alive(qemu):
            os.kill(qemu, signal.SIGKILL)
    took = time.monotonic() - t0
    assert proc.returncode == 1, out
    assert "is stopped (process state T" in out, out
    assert f"kill -CONT {qemu}" in out
    assert took < 30, f"took {took:.1f}s\n{out}"
    assert not _alive(qemu)
    assert [p for p in short.iterdir() if p.name.startswith("memhp-")] == []
    short.rmdir()


@pytest.mark.fault
def test_qemu_killed_during_exec_is_reported_as_such(memhp_guest_image) -> None:
    """kill -9 of QEMU while the --exec runs: the run says QEMU was killed
    (signal 9), not merely "exec ... exit -1"."""
    proc, short, lines = start_held_run()
    (qemu,) = _memhp_qemus(proc.pid)
    os.kill(qemu, signal.SIGKILL)
    out = _finish(proc, lines, 60)
    assert proc.returncode == 1, out
    assert "QEMU exited (signal 9)" in out, out
    assert [p for p in short.iterdir() if p.name.startswith("memhp-")] == []
    short.rmdir()


@pytest.mark.fault
def test_paused_guest_is_named_within_the_command_timeout(memhp_vm_factory) -> None:
    """QEMU answers QMP but the guest's CPUs do not run (QMP ``stop``): a
    guest command times out once and the cause is named."""
    vm = memhp_vm_factory(memory="1G,slots=2,maxmem=2G", numa="512M,512M")
    vm.execute("stop")
    start = time.monotonic()
    with pytest.raises(QemuUnresponsive, match="not running \\(QMP status 'paused'\\)"):
        vm.ssh(["true"], timeout=5)
    assert time.monotonic() - start < 20


@pytest.mark.fault
def test_stopped_qemu_is_named_at_the_next_qmp_command(memhp_vm_factory) -> None:
    vm = memhp_vm_factory(memory="1G,slots=2,maxmem=2G", numa="512M,512M")
    start = time.monotonic()
    os.kill(vm.pid, signal.SIGSTOP)  # takes effect a moment later: QMP is sent meanwhile
    with pytest.raises(QemuUnresponsive, match="is stopped"):
        vm.hot_add("d0", 128 << 20, 0)
    with pytest.raises(QemuUnresponsive, match="is stopped"):
        vm.ssh(["true"])
    assert time.monotonic() - start < 15  # not the 60 s QMP / 240 s SSH timeouts
    vm.stop()
    assert vm.proc is not None and vm.proc.poll() is not None


@pytest.mark.fault
def test_kill_9_of_memhp_leaves_a_dir_the_next_memhp_sweeps(memhp_guest_image) -> None:
    """kill -9 of memhp: its QEMU dies with it (PR_SET_PDEATHSIG), its work dir
    stays; the next memhp, even one that refuses its input, removes it."""
    proc, short, lines = start_held_run()
    (qemu,) = _memhp_qemus(proc.pid)
    left = [p for p in short.iterdir() if p.name.startswith("memhp-")]
    assert len(left) == 1 and (left[0] / "owner").read_text().split()[0] == str(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(qemu), "QEMU outlived memhp"
    assert left[0].exists()  # nobody could clean up
    env = dict(os.environ, TMPDIR=str(short), XDG_RUNTIME_DIR="")
    refused = run_cli("run", "--add", "bad id:1G@1", env=env, timeout=120, cwd=short)
    assert refused.returncode == 2, refused.stderr
    left_after = [p for p in short.iterdir() if p.name.startswith("memhp-")]
    assert left_after == [], [(p, (p / "owner").read_text() if (p / "owner").exists() else "?")
                              for p in left_after]
    short.rmdir()
