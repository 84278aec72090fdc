"""Debian's 7.x kernel (trixie-backports) as Debian ships it, for real:
``linux-image-VER`` depends on ``linux-{base,binary,modules}-VER`` and
everything sits in ``usr/lib/modules/VER/`` (vmlinuz, config, System.map,
kernel/).  Fetched with memhp's own apt into ``<cache>/apt-trixie-backports``
(about 120 MB, once), never installed; one TCG boot each on QEMU 10.0 and
on the newest QEMU, 11.1 (QEMU 7.2's TCG crashes 6.12+ kernels now and
then): the newest Debian kernel on the newest QEMU, calibrated too.  The kernel onlines
hot-added memory by itself, into ZONE_NORMAL: the virtio-mem scenario of
issue 18 must pass whatever busy memory the guest keeps plugged."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HostEnvironmentError
from kernels._cli import DEBIAN_7X, NEWEST_QEMU, QEMU_FOR_612, memhp_cli, run_json

ISSUE_18 = Path(__file__).parent.parent / "scenarios" / "virtio_mem_issue18.toml"


@pytest.fixture(scope="session")
def unpacked_7x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's parts unpacked as a user would: ``<root>/usr/lib/modules/VER/``."""
    from harness.apt import Apt
    from harness.image.debs import kernel_debs, split_package_spec, unpack_kernel_deb

    name, suite = split_package_spec(DEBIAN_7X)
    apt = Apt.for_suite(suite)
    try:
        debs = kernel_debs(apt, apt.resolve(name, suite), suite)
    except HostEnvironmentError as exc:
        pytest.skip(f"cannot fetch {DEBIAN_7X} (no Debian mirror?): {exc}")
    root = tmp_path_factory.mktemp("debian-7x")
    for deb in debs:
        unpack_kernel_deb(deb, root)
    return root


@pytest.mark.long_running
@pytest.mark.vm
def test_seed_session_with_kernel_package_on_the_newest_qemu() -> None:
    proc, doc = run_json("--kernel-package", DEBIAN_7X, *NEWEST_QEMU)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert doc["kernel"].startswith("7."), doc["kernel"]
    assert doc["qemu_version"].startswith("11."), doc["qemu_version"]
    # within the versions the model was read from: no flag
    assert doc["model"]["extrapolated_from"] == {}, doc["model"]


@pytest.mark.long_running
@pytest.mark.vm
@pytest.mark.parametrize("qemu", [QEMU_FOR_612, NEWEST_QEMU], ids=["qemu10.0", "qemu11.1"])
def test_seed_session_with_kernel_beside_its_modules(unpacked_7x: Path,
                                                     qemu: tuple[str, str]) -> None:
    """`--kernel usr/lib/modules/VER/vmlinuz`, no --modules: found beside it."""
    [vmlinuz] = unpacked_7x.glob("usr/lib/modules/*/vmlinuz")
    proc, doc = run_json("--kernel", str(vmlinuz), *qemu)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert doc["kernel"].startswith(vmlinuz.parent.name + " "), doc["kernel"]


@pytest.mark.long_running
@pytest.mark.vm
def test_issue_18_virtio_mem_on_auto_onlining_7x(tmp_path: Path) -> None:
    proc, doc = run_json("--kernel-package", DEBIAN_7X, "--scenario", str(ISSUE_18),
                         "--keep", str(tmp_path / "keep"), *QEMU_FOR_612)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    grown = doc["steps"][1]
    assert {b["state"] for b in grown["observed"]["blocks"]} == {"online"}


@pytest.mark.long_running
@pytest.mark.vm
def test_calibrate_newest_kernel_on_newest_qemu(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """memhp calibrate on the newest pair: the QEMU side whole (paused, no
    guest), the kernel side on a representative part of the policy cases
    (memmap_on_memory's per-block memmap, the zone spans, virtio-mem)."""
    import json

    monkeypatch.setenv("MEMHP_CALIBRATION_DIR", str(tmp_path))
    proc = memhp_cli("calibrate", "--kernel-package", DEBIAN_7X, *NEWEST_QEMU, "--plans",
                     "20", "--case", "memmap_on_memory", "--case", "zone_spans", "--case",
                     "virtio_mem_grow_shrink", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    qemu_doc, kernel_doc = json.loads(proc.stdout)
    assert qemu_doc["agreed"] and qemu_doc["clean"], qemu_doc["disagreements"]
    assert all(total > 0 for _, total in qemu_doc["counts"].values()), qemu_doc["counts"]
    assert kernel_doc["agreed"], kernel_doc["cases"]
    assert [c["id"] for c in kernel_doc["cases"]] == [
        "memmap_on_memory", "zone_spans", "virtio_mem_grow_shrink"]

