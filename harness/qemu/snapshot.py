"""Saving a running guest's state to a file, and starting QEMU from it.

Both use QEMU's own migration stream, which QEMU 7.2 and 10.0 both write
to a file descriptor and read from a command:

* **save**: the VM is stopped (``stop``), a pipe's write end is handed to
  QEMU over QMP (``getfd``, SCM_RIGHTS) and ``migrate`` is sent to
  ``fd:NAME``.  The read end feeds a ``zstd`` that memhp started itself
  (or a plain copy when zstd is missing), so memhp waits for the
  compressor's own exit and the file is complete before it is published.
  (QEMU 7.2 has no ``file:`` URI, and an ``exec:`` sink is killed by QEMU:
  ``qio_channel_command_abort()`` in ``io/channel-command.c`` sends SIGTERM
  to a command that has not exited the moment its pipe closes, which can
  cut off the last pipe-full of a compressor's output.)
* **restore**: QEMU starts with ``-incoming exec:zstd -dcq FILE`` (the
  reading end may be ended early: QEMU has read all it needs by then),
  stays ``paused`` (the source was stopped, and ``global_state`` carries
  that run state over: ``migration/global_state.c``), and memhp sends
  ``cont``.

Zero pages are sent as a flag and no data (``save_zero_page()`` in
``migration/ram.c``), and the destination leaves a zero page it receives
untouched when it already reads zero (``ram_handle_compressed()``), so RAM
the guest never touched costs a few bytes in the file and no host memory
after restore.  The stream holds what the guest wrote: kernel, initramfs,
``struct page`` arrays (64 bytes per 4 KiB of boot RAM), page cache.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import QMPCommandError, VMError
from harness.retry import wait_for

FD_NAME = "memhp-state"
# zstd level 1 on one thread: the stream is mostly struct pages and zeros,
# which level 1 shrinks ~5x at several hundred MB/s.
ZSTD = "zstd"


@dataclass(frozen=True)
class SaveResult:
    """What :func:`save_state` wrote and how long it took."""

    path: Path
    size: int  # bytes on disk
    stream_bytes: int  # bytes QEMU sent (before compression)
    seconds: float
    compressed: bool


def have_zstd() -> bool:
    return shutil.which(ZSTD) is not None


def incoming_args(state: Path, *, compressed: bool) -> list[str]:
    """``-incoming`` for a state written by :func:`save_state` (QEMU runs the
    command with ``/bin/sh -c``: ``migration/exec.c``)."""
    reader = f"{ZSTD} -dcq" if compressed else "cat"
    return ["-incoming", f"exec:{reader} {shlex.quote(str(state))}"]


def _migrate_status(vm: Any) -> dict[str, Any] | None:
    info = vm.execute("query-migrate", phase="save")
    status = info.get("status") if isinstance(info, dict) else None
    if status == "completed":
        return dict(info)
    if status in ("failed", "cancelled"):
        raise VMError(f"QEMU could not save the VM state: migration {status}"
                      f"{': ' + info['error-desc'] if info.get('error-desc') else ''}",
                      phase="save")
    return None


def save_state(vm: Any, dest: Path, *, compress: bool = True) -> SaveResult:
    """Stop ``vm`` and write its state to ``dest`` (created 0600).

    The VM is left stopped (QMP status ``postmigrate``); ``cont`` resumes it.
    """
    qmp = vm.qmp
    if qmp is None:
        raise VMError("cannot save a VM that is not running", phase="save")
    compress = compress and have_zstd()
    t0 = time.monotonic()
    read_end, write_end = os.pipe()
    out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sink_argv = [ZSTD, "-1", "-q", "-T1", "-c"] if compress else ["cat"]
    try:
        sink = subprocess.Popen(sink_argv, stdin=read_end, stdout=out_fd,
                                stderr=subprocess.PIPE)
    finally:
        os.close(read_end)
        os.close(out_fd)
    try:
        vm.execute("stop", phase="save")
        try:
            qmp.send_fd(write_end)
            vm.execute("getfd", {"fdname": FD_NAME}, phase="save")
        finally:
            os.close(write_end)  # QEMU holds its own copy now
        vm.execute("migrate", {"uri": f"fd:{FD_NAME}"}, phase="save")
        info = wait_for(lambda: _migrate_status(vm), what="QEMU to write the VM state",
                        timeout=vm.timeouts.s("boot"), first_interval=0.01,
                        max_interval=0.1, abort=vm.check_alive, phase="save")
        _, err = sink.communicate(timeout=vm.timeouts.s("command"))
        if sink.returncode != 0:
            raise VMError(f"{sink_argv[0]} writing {dest} exited {sink.returncode}: "
                          f"{err.decode(errors='replace').strip()}", phase="save")
    except BaseException:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
        raise
    ram = info.get("ram", {})
    return SaveResult(path=dest, size=dest.stat().st_size,
                      stream_bytes=int(ram.get("transferred", 0)),
                      seconds=time.monotonic() - t0, compressed=compress)


def resume(vm: Any) -> None:
    """``cont`` a VM that is stopped after a save or an incoming migration."""
    vm.execute("cont", phase="restore")


def wait_incoming(vm: Any) -> None:
    """Wait until QEMU has loaded the incoming state (QMP status ``paused``),
    then ``cont``.  QEMU exits with its own words when it refuses the stream
    (raised by ``vm.check_alive`` as QemuExited)."""
    def loaded() -> bool | None:
        status = vm.execute("query-status", phase="restore").get("status")
        if status == "inmigrate":
            return None
        if status in ("paused", "postmigrate", "running"):
            return True
        raise VMError(f"after loading the saved state QEMU is {status!r}, not paused",
                      phase="restore")

    wait_for(loaded, what="QEMU to load the saved VM state", timeout=vm.timeouts.s("boot"),
             first_interval=0.005, max_interval=0.05, abort=vm.check_alive, phase="restore")
    try:
        resume(vm)
    except QMPCommandError as exc:
        raise VMError(f"QEMU would not resume the restored VM: {exc}", phase="restore") from exc


def refresh_guest(vm: Any, *, epoch: float | None = None, seed: bytes | None = None) -> None:
    """After a restore the guest's wall clock is the time of the save and its
    random state is the saved one: set the clock from the host's and mix
    fresh host randomness into the guest's pool (``write_pool_user()`` in
    ``drivers/char/random.c``: written bytes are mixed in, not credited)."""
    epoch = time.time() if epoch is None else epoch
    seed = os.urandom(32) if seed is None else seed
    script = (f"date -s @{int(epoch)} >/dev/null && "
              f"echo {seed.hex()} > /dev/urandom && date +%s")
    out = vm.ssh(["sh", "-c", script], timeout=vm.timeouts.s("command")).stdout.strip()
    try:
        guest_now = int(out.splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise VMError(f"setting the restored guest's clock: unexpected output {out!r}",
                      phase="restore") from exc
    if abs(guest_now - epoch) > 60 * vm.timeouts.scale:
        raise VMError(f"the restored guest's clock reads {guest_now}, the host's {int(epoch)}",
                      phase="restore")
