"""Shared fixtures of memhp's own test suite (the plugin provides the VM ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def default_kernel(memhp_guest_image: Any) -> Path:
    """The guest kernel every VM test boots."""
    return Path(memhp_guest_image.kernel)
