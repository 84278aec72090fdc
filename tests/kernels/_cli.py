"""Helpers of the kernel-matrix tests: memhp's CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

#: apt's pkg/release spelling, as `memhp run --kernel-package` takes it.
DEBIAN_612 = "linux-image-amd64/bookworm-backports"


def memhp_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_json(*args: str, retry_unbooted: bool = False
             ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`memhp run ... --json`: the process and its result document.

    ``retry_unbooted``: QEMU 7.2's TCG crashes Debian's 6.12 generic kernel
    early in about 1 boot of 30 (a QEMU bug fixed by 10.0, issue 15), before
    memhp does anything; such a run is repeated once, and says so.
    """
    proc = memhp_cli("run", *args, "--json")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"memhp run printed no JSON (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    error = doc.get("error") or {}
    if retry_unbooted and error and not error.get("booted", True):
        print(f"memhp run: the guest never booted ({error.get('kind')}: "
              f"{str(error.get('message'))[:2000]}); known QEMU 7.2 TCG crash of 6.12, "
              "running once more", file=sys.stderr)
        return run_json(*args)
    return proc, doc
