"""Debian's 7.x kernel (trixie-backports) as Debian ships it, for real:
``linux-image-VER`` depends on ``linux-{base,binary,modules}-VER`` and
everything sits in ``usr/lib/modules/VER/`` (vmlinuz, config, System.map,
kernel/).  Fetched with memhp's own apt into ``<cache>/apt-trixie-backports``
(about 120 MB, once), never installed; one TCG boot each on QEMU 10.0
(QEMU 7.2's TCG crashes 6.12+ kernels now and then).  The kernel onlines
hot-added memory by itself, into ZONE_NORMAL: the virtio-mem scenario of
issue 18 must pass whatever busy memory the guest keeps plugged."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HostEnvironmentError
from kernels._cli import DEBIAN_7X, QEMU_FOR_612, run_json

ISSUE_18 = Path(__file__).parent.parent / "scenarios" / "virtio_mem_issue18.toml"


@pytest.fixture(scope="session")
def unpacked_7x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's parts unpacked as a user would: ``<root>/usr/lib/modules/VER/``."""
    from harness.apt import Apt
    from harness.image.build import _unpack_kernel_deb, kernel_debs, split_package_spec

    name, suite = split_package_spec(DEBIAN_7X)
    apt = Apt.for_suite(suite)
    try:
        debs = kernel_debs(apt, apt.resolve(name, suite), suite)
    except HostEnvironmentError as exc:
        pytest.skip(f"cannot fetch {DEBIAN_7X} (no Debian mirror?): {exc}")
    root = tmp_path_factory.mktemp("debian-7x")
    for deb in debs:
        _unpack_kernel_deb(deb, root)
    return root


@pytest.mark.long_running
@pytest.mark.vm
def test_seed_session_with_kernel_package() -> None:
    proc, doc = run_json("--kernel-package", DEBIAN_7X, *QEMU_FOR_612)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert doc["kernel"].startswith("7."), doc["kernel"]


@pytest.mark.long_running
@pytest.mark.vm
def test_seed_session_with_kernel_beside_its_modules(unpacked_7x: Path) -> None:
    """`--kernel usr/lib/modules/VER/vmlinuz`, no --modules: found beside it."""
    [vmlinuz] = unpacked_7x.glob("usr/lib/modules/*/vmlinuz")
    proc, doc = run_json("--kernel", str(vmlinuz), *QEMU_FOR_612)
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
