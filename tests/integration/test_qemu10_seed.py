"""The seed session end to end on Debian's QEMU 10.0 (``--qemu debian:10.0``):
fetched into memhp's cache, run through the CLI exactly as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.testing import run_cli


@pytest.mark.parametrize("plan", [
    [],  # the seed session: pc, 6G over 2 nodes, 1G DIMM on node 1, online_movable
    # q35 (another split and region), two DIMMs (one at "address 0"), a removal
    ["--machine", "q35", "--memory", "4096,slots=4,maxmem=8G", "--numa", "2048,2048",
     "--add", "a:512M@0", "--add", "b:1G@1:0", "--remove", "a"],
], ids=["seed", "q35-add-remove"])
def test_sessions_pass_on_qemu_10(memhp_guest_image: Any, tmp_path: Path,
                                  plan: list[str]) -> None:
    from harness.qemu.fetch import resolve_qemu

    try:
        resolve_qemu("debian:10.0")
    except HarnessError as exc:
        pytest.skip(f"Debian's QEMU 10.0 could not be fetched: {exc}")
    proc = run_cli("run", "--qemu", "debian:10.0",
                   "--accel", "tcg", "--json", "--keep", str(tmp_path / "art"), *plan,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["result"] == "pass"
    assert result["qemu_version"].startswith("10.0.")
    assert [s["passed"] for s in result["steps"]] == [True] * len(result["steps"])


def test_plan_qemu_10_refuses_at_start_up_exits_2_without_a_vm(tmp_path: Path) -> None:
    from harness.qemu.fetch import resolve_qemu

    try:
        resolve_qemu("debian:10.0")
    except HarnessError as exc:
        pytest.skip(f"Debian's QEMU 10.0 could not be fetched: {exc}")
    proc = run_cli("run", "--qemu", "debian:10.0",
                   "--machine", "q35", "--memory", "512M,slots=1,maxmem=988G",
                   "--numa", "", "--add", "d0:1G@0", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Address space limit 0xffffffffff < 0x1ff3fffffff phys-bits too low (40)" in \
        proc.stderr
