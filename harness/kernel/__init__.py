"""Build small bootable kernels for memhp (``memhp kernel build``; see :mod:`.build`)."""

from harness.kernel.build import (
    KernelBuild,
    build_kernel,
    cache_key,
    default_fragments,
    requested_options,
    verify_config,
)

__all__ = ["KernelBuild", "build_kernel", "cache_key", "default_fragments",
           "requested_options", "verify_config"]
