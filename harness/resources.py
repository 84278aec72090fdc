"""Where memhp's data lives: ``guest_images/`` and ``kconfigs/``.

An installed wheel carries them as package data, ``harness/data/NAME``
(see setup.py), found through :mod:`importlib.resources`; in a checkout
(``pip install -e``) they sit beside the ``harness`` package.  This module
is the only place that knows that.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.cache import cache_root  # noqa: F401 - where the cache is: harness.cache
from harness.errors import HostEnvironmentError

_CHECKOUT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """Return the data directory ``name`` (``guest_images`` or ``kconfigs``)."""
    packaged = resources.files("harness").joinpath("data", name)
    if packaged.is_dir():
        return Path(str(packaged))
    path = _CHECKOUT / name
    if path.is_dir():
        return path
    raise HostEnvironmentError(
        f"memhp data directory {name!r} is missing (neither {packaged} nor {path}); "
        "reinstall memhp (fix: pip install memhp-harness from a wheel, or pip install -e . "
        "from a checkout)"
    )


def guest_images_dir() -> Path:
    return data_dir("guest_images")


def kconfigs_dir() -> Path:
    return data_dir("kconfigs")
