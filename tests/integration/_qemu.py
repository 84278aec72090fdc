"""Driving a real QEMU with no guest, shared by the model-vs-QEMU tests
(test_model_vs_qemu, test_virtio_mem_vs_qemu, test_backends_vs_qemu):
the QEMU of a version (or a skip saying why there is none), its command
line for a :class:`MachineSpec`, a paused (-S) QEMU with its QMP session,
the model's refusal of a plan, and the agreement log
(``MEMHP_AGREEMENT_LOG=FILE``: one JSON line per comparison)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.errors import HarnessError, PlanRefused
from harness.model import MachineSpec, predict
from harness.model.spec import Operation
from harness.qemu.qmp import QMPSession
from harness.retry import wait_for
from harness.session import qemu_version

_BINARIES: dict[str, str | None] = {}


def binary(version: str) -> str:
    """The QEMU of ``version``, or a skip saying why there is none."""
    if version not in _BINARIES:
        found: str | None = None
        why = ""
        if version == "7.2":
            found = shutil.which("qemu-system-x86_64")
            why = "qemu-system-x86_64 is not installed (make setup installs Debian 12's 7.2)"
        else:
            from harness.qemu.fetch import resolve_qemu

            try:
                found = resolve_qemu(f"debian:{version}")
            except HarnessError as exc:
                why = f"Debian's QEMU {version} could not be fetched: {exc}"
        if found is not None and not qemu_version(found).startswith(version + "."):
            why, found = f"{found} is QEMU {qemu_version(found)}, not {version}", None
        _BINARIES[version] = found
        _BINARIES[version + ":why"] = why
    found = _BINARIES[version]
    if found is None:
        pytest.skip(_BINARIES[version + ":why"] or f"no QEMU {version}")
    return found


def log(record: dict[str, object]) -> None:
    """Append one comparison to ``MEMHP_AGREEMENT_LOG`` (the README's counts)."""
    path = os.environ.get("MEMHP_AGREEMENT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def qemu_argv(binary: str, spec: MachineSpec, sock: Path) -> list[str]:
    mem = f"{spec.ram_size >> 20}M"
    if spec.slots:
        mem += f",slots={spec.slots}"
    if spec.maxmem:
        mem += f",maxmem={spec.maxmem >> 20}M"
    cpu = f"{spec.cpu.model},phys-bits={spec.cpu.phys_bits}"
    if spec.cpu.model in ("amd", "intel"):
        cpu = f"qemu64,vendor={'AuthenticAMD' if spec.cpu.is_amd else 'GenuineIntel'}," \
              f"phys-bits={spec.cpu.phys_bits}"
    argv = [binary, "-S", "-nodefaults", "-no-user-config", "-display", "none", "-accel", "tcg",
            "-machine", spec.machine_name, "-cpu", cpu, "-m", mem,
            "-qmp", f"unix:{sock},server=on,wait=off"]
    for i, size in enumerate(spec.numa):
        argv += ["-object", f"memory-backend-ram,id=mem{i},size={size >> 20}M",
                 "-numa", f"node,nodeid={i},memdev=mem{i}"]
    return argv


@contextmanager
def paused_qemu(binary: str, spec: MachineSpec, *, prefix: str = "memhp-modelq-",
                timeout: float = 20) -> Iterator[QMPSession]:
    """A QEMU started paused (-S) for ``spec``, connected over QMP; killed
    on exit.  ``timeout``: how long QEMU may take to open its socket."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(qemu_argv(binary, spec, sock), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        qmp = QMPSession(sock)
        try:
            wait_for(lambda: True if sock.exists() or proc.poll() is not None else None,
                     what="QMP socket", timeout=timeout)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            qmp.connect()
            yield qmp
        finally:
            qmp.close()
            proc.kill()
            proc.wait()


def refusal(spec: MachineSpec, ops: Sequence[Operation]) -> PlanRefused | None:
    """The model's refusal of the plan ``ops`` (its last step, when the
    plan up to it was accepted), or None when the model accepts it."""
    try:
        predict(spec, list(ops))
    except PlanRefused as exc:
        return exc
    return None
