"""Fixtures of the model-vs-QEMU tests (helpers: :mod:`_qemu`)."""

from __future__ import annotations

import pytest
from _qemu import binary


@pytest.fixture(params=["7.2", "10.0", "11.1"], ids=["qemu7.2", "qemu10.0", "qemu11.1"])
def qemu(request: pytest.FixtureRequest) -> tuple[str, tuple[int, int]]:
    """Each QEMU the model covers, as (binary, version); a skip names why
    one is missing."""
    major, minor = request.param.split(".")
    return binary(request.param), (int(major), int(minor))
