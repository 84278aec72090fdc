"""Where memhp's data lives: ``guest_images/`` and ``kconfigs/``.

An installed wheel carries them as package data, ``harness/data/NAME``
(see setup.py), found through :mod:`importlib.resources`; in a checkout
(``pip install -e``) they sit beside the ``harness`` package.  This module
is the only place that knows that.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

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


def cache_root(override: Path | None = None) -> Path:
    """memhp's cache: ``override``, else ``$MEMHP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/memhp``, else ``~/.cache/memhp``."""
    if override is not None:
        return override
    base = os.environ.get("MEMHP_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "memhp"
