"""Where memhp's data lives: ``guest_images/`` and ``kconfigs/``.

They sit beside the ``harness`` package in the checkout (the README installs
with ``pip install -e``); this module is the only place that knows that.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HostEnvironmentError

_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """Return the data directory ``name`` (``guest_images`` or ``kconfigs``)."""
    path = _ROOT / name
    if not path.is_dir():
        raise HostEnvironmentError(
            f"memhp data directory {path} is missing; install memhp from a checkout "
            "with `pip install -e .`"
        )
    return path


def guest_images_dir() -> Path:
    return data_dir("guest_images")


def kconfigs_dir() -> Path:
    return data_dir("kconfigs")
