"""The kernel matrix of memhp's own tests (issue 14): Debian's 6.12 generic
kernel from bookworm-backports, fetched with memhp's own apt into the cache
(never installed), and kernels built from source.

QEMU 7.2's TCG crashes Debian's 6.12 *cloud* kernel in about 2 of 3 boots
(double fault in kmem_cache_alloc_noprof); the *generic* flavour crashed
once in 30 boots, so the matrix uses ``linux-image-amd64`` until memhp
boots it on QEMU 10.0 (issue 15).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import HostEnvironmentError
from kernels._cli import DEBIAN_612


def _skip_without_mirror(exc: HostEnvironmentError) -> None:
    pytest.skip(f"cannot fetch {DEBIAN_612} (no Debian mirror?): {exc}")


@pytest.fixture(scope="session")
def image_612() -> Any:
    """memhp's guest image with Debian's 6.12 generic kernel (cached)."""
    from harness.image import build_image

    try:
        return build_image(kernel_package=DEBIAN_612)
    except HostEnvironmentError as exc:
        _skip_without_mirror(exc)


@pytest.fixture(scope="session")
def unpacked_612(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's 6.12 package unpacked as a user would (``dpkg-deb -x``'s boot/
    and lib/modules/): ``<root>/boot/vmlinuz-VER``, ``<root>/lib/modules/VER``."""
    from harness.apt import Apt
    from harness.image.debs import split_package_spec, unpack_kernel_deb

    name, suite = split_package_spec(DEBIAN_612)
    apt = Apt()
    try:
        concrete = apt.resolve(name, suite)
        deb = apt.download([concrete], suite)[concrete]
    except HostEnvironmentError as exc:
        _skip_without_mirror(exc)
    root = tmp_path_factory.mktemp("debian-612")
    unpack_kernel_deb(deb, root)
    return root
