"""memhp's pytest plugin (registered through the ``pytest11`` entry point).

Being written in the plugin issue; for now it only registers the markers
the test suite uses so ``--strict-markers`` accepts them.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long test (boots VMs or builds kernels)")
    config.addinivalue_line("markers", "vm: boots a real QEMU guest")
