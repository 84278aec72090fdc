"""virtio-mem on Debian's 6.12 (bookworm-backports) on QEMU 10.0: the
driver model was read in 6.1 and 6.12 (harness.devices.virtio_mem.driver);
here the 6.12 guest onlines the blocks by itself (into ZONE_NORMAL), and
the TOML of issue 18 runs as written, every step checked against the model.
Unplugging from ZONE_NORMAL is the one part the model cannot promise (an
unmovable page makes the driver retry); an idle guest has none."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels._cli import DEBIAN_612, QEMU_FOR_612, run_json

ISSUE_18 = Path(__file__).parent.parent / "scenarios" / "virtio_mem_issue18.toml"


@pytest.mark.long_running
@pytest.mark.vm
def test_issue_18_on_debian_612(tmp_path: Path) -> None:
    proc, doc = run_json("--kernel-package", DEBIAN_612, "--scenario", str(ISSUE_18),
                         "--keep", str(tmp_path / "keep"), *QEMU_FOR_612)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert doc["kernel"].startswith("6.12."), doc["kernel"]
    grown = doc["steps"][1]
    assert {b["state"] for b in grown["observed"]["blocks"]} == {"online"}
    [vmem] = grown["observed"]["virtio_mem"]
    assert vmem["size"] == vmem["requested_size"]  # auto-online: no offline threshold
