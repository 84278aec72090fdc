"""The host side of a test: hugepage pools, hugetlbfs mounts and what
QEMU's backends do to them (:mod:`.hugepages`, :mod:`.checks`)."""
