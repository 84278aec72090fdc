"""The default guest image: build, cache, describe (see :mod:`.build`)."""

from harness.image.build import (
    GuestImage,
    Recipe,
    build_image,
    cache_root,
    ensure_default_image,
)

__all__ = ["GuestImage", "Recipe", "build_image", "cache_root", "ensure_default_image"]
