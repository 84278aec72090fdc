"""The default guest image: build, cache, describe.

:mod:`.guest` (the image and its recipe), :mod:`.debs` (Debian kernel
packages), :mod:`.user_kernel` (a ``--kernel``'s modules and config),
:mod:`.initramfs` (modules and the cpio archive), :mod:`.build` (the
cached build).
"""

from harness.cache import cache_root
from harness.image.build import build_image, ensure_default_image
from harness.image.guest import GuestImage, Recipe

__all__ = ["GuestImage", "Recipe", "build_image", "cache_root", "ensure_default_image"]
