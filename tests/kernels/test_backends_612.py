"""Backends on Debian's 6.12 (auto-online) and QEMU 10.0, through `memhp run`.

A scenario file with a 2 MiB-hugepage memfd DIMM and a preallocated,
node-bound, shared hugetlbfs file DIMM with discard-data: `memhp run`
reserves the hugepages itself (and gives them back), the guest onlines the
memory by itself (movable, from the command line), and the add/remove
steps check the host side (query-memdev, HugePages Free/Rsvd per DIMM,
prealloc's threads, the backing file) on top of the usual comparison.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.host.hugepage_pools import pool
from harness.units import MiB
from kernels._cli import DEBIAN_612, QEMU_FOR_612, run_json

SCENARIO = """
name = "backends-612"
[machine]
memory = "2G,slots=4,maxmem=8G"
numa = "1G,1G"
[guest]
append = ["memhp_default_state=online_movable"]
[[step]]
add = "h0:256M@1"
backend = "memfd"
hugepages = "2M"
[[step]]
add = "f0:128M@0"
backend = "file"
hugepages = "2M"
share = true
discard_data = true
prealloc = true
prealloc_threads = 2
host_nodes = "0"
policy = "bind"
[[step]]
remove = "h0"
[[step]]
remove = "f0"
"""


@pytest.mark.vm
def test_hugepage_backends_on_612(tmp_path: Path) -> None:
    before = pool(2 * MiB)
    if before is None:
        pytest.skip("the host kernel offers no 2 MiB hugepages")
    path = tmp_path / "backends.toml"
    path.write_text(SCENARIO)
    proc, doc = run_json("--kernel-package", DEBIAN_612, "--scenario", str(path),
                         *QEMU_FOR_612)
    error = doc.get("error") or {}
    if error.get("kind") == "HostCannot":
        pytest.skip(f"hugepages: {error.get('message')}")
    assert doc["result"] == "pass", (error, [s["mismatches"] for s in doc["steps"]],
                                     proc.stderr[-3000:])
    assert doc["kernel"].startswith("6.12.")
    add_f0 = doc["steps"][1]
    assert add_f0["latencies"]["prealloc_threads_seen"] <= \
        add_f0["latencies"]["prealloc_threads_rule"]
    after = pool(2 * MiB)
    assert after is not None and after.nr == before.nr  # given back
