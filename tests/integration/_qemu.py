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

import pytest

from harness.calibrate.qemu import model_refusal as refusal
from harness.calibrate.qemu import paused_qemu, qemu_argv
from harness.errors import HarnessError
from harness.qemu.version import qemu_version

__all__ = ["binary", "log", "paused_qemu", "qemu_argv", "refusal"]

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


