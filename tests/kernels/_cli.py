"""Helpers of the kernel-matrix tests: memhp's CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from harness.testing import run_cli

#: apt's pkg/release spelling, as `memhp run --kernel-package` takes it.
DEBIAN_612 = "linux-image-amd64/bookworm-backports"


def memhp_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=timeout)


def run_json(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`memhp run ... --json`: the process and its result document."""
    proc = memhp_cli("run", *args, "--json")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"memhp run printed no JSON (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc, doc


#: Debian's 6.12 boots reliably under QEMU 10.0's TCG; QEMU 7.2's crashes it
#: early now and then (about 1 boot in 30 for the generic flavour).
QEMU_FOR_612 = ("--qemu", "debian:10.0")

#: Debian's newest kernel as trixie-backports ships it (7.3.x when written):
#: split into linux-{base,binary,modules}-VER, everything in usr/lib/modules/VER/.
DEBIAN_7X = "linux-image-amd64/trixie-backports"

#: The newest QEMU memhp knows (trixie-backports' 11.1, on its own loader
#: and libraries): the matrix's newest kernel runs on it, so drift between
#: the model and what Debian ships shows the day a package lands.
NEWEST_QEMU = ("--qemu", "debian:11.1")
