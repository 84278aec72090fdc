"""Build small bootable kernels for memhp (``memhp kernel build``).

:mod:`.source` (the tree: a user's, or Debian's linux-source), :mod:`.fragments`
(what the config fragments ask for and whether it survived), :mod:`.build`
(the cached build).
"""

from harness.kernel.build import KernelBuild, build_kernel, cache_key
from harness.kernel.fragments import default_fragments, requested_options, verify_config

__all__ = ["KernelBuild", "build_kernel", "cache_key", "default_fragments",
           "requested_options", "verify_config"]
