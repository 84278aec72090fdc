"""memhp's pytest plugin (entry point ``pytest11: memhp``).

Options (each with an ini twin and an environment variable) are in
:mod:`.options`, failure reports in :mod:`.reports`, fixtures in
:mod:`.fixtures`; here: configure (markers, settings resolved once into
``config.stash``) and the sharding of the test list.

Settings are resolved option > environment (``MEMHP_*``) > ini.  Bad values
raise :class:`pytest.UsageError` before any test runs.

Fixtures:

``memhp_settings``  the resolved settings (session)
``memhp_guest_image``  the default guest image or the user's kernel (session)
``memhp_accel``  the accelerator choice with its reason (session)
``memhp_targets``  guest, QEMU and accelerator per guest architecture (session):
               a ``memhp_machine(machine="virt")`` test boots the arm64 guest
``memhp_vm_factory``  ``factory(**machine) -> VM``: boots a VM, ended at teardown
``memhp_vm``  a VM for the test's ``@pytest.mark.memhp_machine(...)``
``memhp_guest``  ``memhp_vm.guest`` (typed readers over SSH)
``memhp_model``  the model's prediction for the test's machine (no DIMMs)
``memhp_fuzz``  ``memhp_fuzz(seed=, sequences=, steps=, policies=)``: a small
               ``memhp fuzz`` campaign on the session's guest and QEMU

On failure the report carries the serial tail, ``dmesg``, the QMP
transcript tail and any model-vs-guest mismatches the test recorded
(sections in the terminal, properties in JUnit XML), and the VM's full
artifacts are kept under ``--memhp-artifacts``.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.pytest_plugin.fixtures import (
    _memhp_kvm_marker,
    memhp_accel,
    memhp_fuzz,
    memhp_guest,
    memhp_guest_image,
    memhp_hugepages,
    memhp_model,
    memhp_resolved_guest,
    memhp_settings,
    memhp_targets,
    memhp_vm,
    memhp_vm_factory,
)
from harness.pytest_plugin.options import (
    SETTINGS_KEY,
    Settings,
    _resolve,
    pytest_addoption,
    resolve_settings,
)
from harness.pytest_plugin.reports import (
    MemhpBootRetry,
    pytest_report_header,
    pytest_runtest_makereport,
    record_mismatches,
)

# The hooks and fixtures pytest finds in this module (the entry point).
__all__ = [
    "MemhpBootRetry", "Settings", "_memhp_kvm_marker", "memhp_accel", "memhp_fuzz",
    "memhp_guest",
    "memhp_guest_image", "memhp_hugepages", "memhp_model", "memhp_resolved_guest",
    "memhp_settings", "memhp_targets", "memhp_vm", "memhp_vm_factory", "pytest_addoption",
    "pytest_collection_modifyitems", "pytest_configure", "pytest_report_header",
    "pytest_runtest_makereport", "record_mismatches",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "memhp_machine(machine='pc', memory='6G,slots=32,maxmem=32G', numa='3G,3G', "
        "coldplug=('cold0:512M@0',), "
        "append=(), smp=2): the VM the test's memhp_vm fixture boots",
    )
    config.addinivalue_line("markers", "kvm: needs KVM that really boots a guest "
                                       "(skipped with the probe's reason otherwise)")
    config.addinivalue_line("markers", "slow: a long test (many VM boots or a kernel build)")
    config.addinivalue_line("markers", "memhp_hugepages(**pages): hugepages the test's "
                                       "memhp_hugepages fixture reserves, e.g. "
                                       "memhp_hugepages(**{'2M': 512, '1G': 1})")
    config.addinivalue_line("markers", "memhp_cold_boot: the test needs a real boot (boot-time "
                                       "state, kernel parameters under test): never start its "
                                       "VMs from a saved state")
    config.addinivalue_line("markers", "vm: boots a real QEMU guest")
    config.addinivalue_line("markers", "needs_config(*options): skip unless the guest kernel "
                                       "has these CONFIG_ options enabled")
    config.stash[SETTINGS_KEY] = resolve_settings(config)
    ktap_path = _resolve(config, "ktap")
    if ktap_path and not hasattr(config, "workerinput"):  # the controller writes it
        from pathlib import Path

        from harness.pytest_plugin.ktap import KtapWriter

        config.pluginmanager.register(KtapWriter(Path(ktap_path)), "memhp-ktap")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deterministic sharding of the test list for CI matrices (by node id)."""
    shard = config.stash[SETTINGS_KEY].shard
    if shard is None:
        return
    index, count = shard
    import zlib

    keep: list[Any] = []
    drop: list[Any] = []
    for item in items:
        bucket = zlib.crc32(item.nodeid.encode()) % count
        (keep if bucket == index - 1 else drop).append(item)
    items[:] = keep
    if drop:
        config.hook.pytest_deselected(items=drop)
