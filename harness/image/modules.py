"""Kernel module dependency closure from ``modules.dep``.

``modules.dep`` lines read ``kernel/drivers/net/virtio_net.ko:
kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko``;
a module's dependencies must be loaded before it.  Names compare with ``-``
and ``_`` treated alike, as modprobe does.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.errors import ImageBuildError


def _norm(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """Path of each module -> paths of its dependencies (modprobe's order)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    return deps


def load_order(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """Module paths to insmod, dependencies first, each once."""
    by_name = {_norm(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise ImageBuildError(f"module dependency cycle through {path}")
        visiting.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(_norm(name))
        if path is None:
            raise ImageBuildError(f"kernel module {name!r} is not in modules.dep "
                                  "(built in, or missing from this kernel?)")
        visit(path)
    return order
