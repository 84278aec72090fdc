"""The plugin's fixtures: settings, the guest, the accelerator, VMs (from a
saved state unless a real boot is asked for), hugepages, the model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.model.spec import SEED_MEMORY, SEED_NUMA
from harness.pytest_plugin.options import SETTINGS_KEY, Settings
from harness.pytest_plugin.reports import VMS_KEY, warn_boot_retries


@pytest.fixture(scope="session")
def memhp_settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@dataclass(frozen=True)
class ArchTarget:
    """What the VMs of one architecture boot: the guest, the QEMU binary and
    its version (for the model's rules), the accelerator."""

    guest: Any
    qemu: str
    qemu_version: tuple[int, int] | None
    accel: Any


class Targets:
    """The session's target per guest architecture, each made once: the
    session machine's from the options (--memhp-kernel, --memhp-qemu, ...);
    another architecture's (a ``memhp_machine(machine="virt")`` test in an
    x86 session) boots that architecture's default guest on its own QEMU
    (``--memhp-qemu debian:X.Y`` fetched for it, else the machine's binary)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: dict[str, ArchTarget] = {}

    def for_machine(self, name: str) -> ArchTarget:
        from harness.machines import machine

        board, own = machine(name), machine(self.settings.machine)
        if board.arch not in self.made:
            self.made[board.arch] = self._make(board.debian_arch, board.arch == own.arch, name)
        return self.made[board.arch]

    def _make(self, arch: str, own: bool, name: str) -> ArchTarget:
        from harness.launch import GuestSource, pick_accel, resolve_guest
        from harness.machines import machine
        from harness.pytest_plugin.options import resolve_qemu_for

        s = self.settings
        try:
            if own:
                guest = resolve_guest(GuestSource(
                    kernel=s.kernel, modules=s.modules, disk=s.disk, ssh_user=s.ssh_user,
                    ssh_key=s.ssh_key, ssh_host_key=s.ssh_host_key,
                    kernel_config=s.kernel_config, kernel_package=s.kernel_package,
                    arch=arch))
                qemu, version = s.qemu, s.qemu_version
            else:
                guest = resolve_guest(GuestSource(arch=arch))
                spec = s.qemu_spec if s.qemu_spec.startswith("debian:") else ""
                qemu, version = resolve_qemu_for(spec, name)
        except (HarnessError, pytest.UsageError) as exc:
            pytest.fail(f"memhp: cannot prepare the {arch} guest: {exc}", pytrace=False)
        return ArchTarget(guest, qemu, version,
                          pick_accel(s.accel, guest, qemu, machine(name).arch))


@pytest.fixture(scope="session")
def memhp_targets(memhp_settings: Settings) -> Targets:
    return Targets(memhp_settings)


@pytest.fixture(scope="session")
def memhp_resolved_guest(memhp_settings: Settings, memhp_targets: Targets) -> Any:
    """The guest every VM of the session's machine boots (built once; the
    cache is shared safely by xdist workers through a file lock)."""
    return memhp_targets.for_machine(memhp_settings.machine).guest


@pytest.fixture(scope="session")
def memhp_guest_image(memhp_resolved_guest: Any) -> Any:
    if memhp_resolved_guest.image is None:
        pytest.skip("the guest is a user disk image, not a memhp image")
    return memhp_resolved_guest.image


@pytest.fixture(scope="session")
def memhp_accel(memhp_settings: Settings, memhp_targets: Targets) -> Any:
    return memhp_targets.for_machine(memhp_settings.machine).accel


@pytest.fixture(autouse=True)
def _memhp_kvm_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kvm") is None:
        return
    choice = request.getfixturevalue("memhp_accel")
    if choice.accel != "kvm":
        pytest.skip(f"needs KVM: {choice.reason}")


VMFactory = Callable[..., Any]


@pytest.fixture
def memhp_vm_factory(request: pytest.FixtureRequest, memhp_settings: Settings,
                     memhp_targets: Targets) -> Iterator[VMFactory]:
    """``factory(machine=..., memory=..., numa=..., append=(), smp=2, coldplug=(),
    cold_boot=False)`` starts a VM (``coldplug``: ``ID:SIZE@NODE`` DIMMs on its
    command line): from a saved state of the same inputs (harness.warm) unless
    ``cold_boot``, the test's ``memhp_cold_boot`` marker, ``--memhp-cold-boot``
    or a ``--memhp-kernel`` under test ask for a real boot."""
    from contextlib import ExitStack

    from harness.launch import launch_vm
    from harness.model.qemu_rules import parse_machine_type
    from harness.scenario import build_scenario

    stack = ExitStack()
    vms: list[Any] = request.node.stash.setdefault(VMS_KEY, [])
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40] or "t"
    if not name[0].isalpha():
        name = "t" + name

    warm = not (memhp_settings.cold_boot or memhp_settings.kernel is not None
                or request.node.get_closest_marker("memhp_cold_boot") is not None)

    def factory(machine: str | None = None, memory: str = SEED_MEMORY,
                numa: str | None = SEED_NUMA, append: tuple[str, ...] = (), smp: int = 2,
                coldplug: tuple[Any, ...] = (), cold_boot: bool = False) -> Any:
        target = memhp_targets.for_machine(
            parse_machine_type(machine or memhp_settings.machine).family)
        scenario = build_scenario(name=name, machine=machine or memhp_settings.machine,
                                  memory=memory, numa=numa, coldplug=coldplug,
                                  steps=[], smp=smp, append=append,
                                  qemu_version=target.qemu_version)
        vm, _ = stack.enter_context(launch_vm(
            scenario, target.guest, accel=target.accel.accel,
            qemu_binary=target.qemu, artifacts_on_failure=memhp_settings.artifacts,
            timeout_scale=memhp_settings.timeout_scale, name=name,
            warm=warm and not cold_boot, boot_attempts=memhp_settings.boot_attempts,
        ))
        vm.scenario = scenario
        vms.append(vm)
        _skip_for_missing_config(request, vm)
        return vm

    try:
        with stack:
            yield factory
    finally:  # in teardown: pytest's warnings summary and the JUnit properties see it
        for vm in vms:
            warn_boot_retries(request.node, vm)


def _skip_for_missing_config(request: pytest.FixtureRequest, vm: Any) -> None:
    marker = request.node.get_closest_marker("needs_config")
    if marker is None:
        return
    text = vm.guest.kernel_config()
    if text is None:
        pytest.skip("cannot read the guest kernel's config (/proc/config.gz or /boot/config-*)")
    values = dict(re.findall(r"^CONFIG_(\w+)=(\S+)", text, flags=re.M))
    for opt in marker.args:
        name = opt.removeprefix("CONFIG_")
        if values.get(name) not in ("y", "m"):
            pytest.skip(f"guest kernel lacks CONFIG_{name}")


def _machine_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("memhp_machine")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def memhp_vm(memhp_vm_factory: VMFactory, request: pytest.FixtureRequest) -> Any:
    """A running VM for the test's ``memhp_machine`` marker (default: the seed's)."""
    return memhp_vm_factory(**_machine_kwargs(request))


@pytest.fixture
def memhp_hugepages(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Reserve the hugepages of the test's ``memhp_hugepages`` marker (with a
    hugetlbfs of each size) and give them back afterwards, whatever happens
    (harness.host.hugepages.reserved); skips with the reason where the host
    cannot.  Request it before ``memhp_vm`` so that the VM ends first."""
    from harness.host.hugepages import HostCannot, reserved
    from harness.model.backend import parse_hugepages

    marker = request.node.get_closest_marker("memhp_hugepages")
    wanted = dict(marker.kwargs) if marker else {"2M": 512}
    needs: dict[int, int] = {}
    for size, pages in wanted.items():
        page = parse_hugepages(size, "memhp_hugepages")
        if page is None or isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
            raise pytest.UsageError(f"memhp_hugepages({size}={pages!r}): give a page size "
                                    "(2M, 1G) and a positive page count")
        needs[page] = pages
    try:
        with reserved(needs) as res:
            yield res
    except HostCannot as exc:
        pytest.skip(f"hugepages: {exc}")


@pytest.fixture
def memhp_guest(memhp_vm: Any) -> Any:
    return memhp_vm.guest


@pytest.fixture
def memhp_model(request: pytest.FixtureRequest) -> Any:
    """The model's prediction (layout, boot nodes) for the test's machine."""
    from harness.scenario import build_scenario

    kw = _machine_kwargs(request)
    settings = request.config.stash[SETTINGS_KEY]
    return build_scenario(name="model", machine=kw.get("machine", settings.machine),
                          memory=kw.get("memory", SEED_MEMORY),
                          numa=kw.get("numa", SEED_NUMA), steps=[],
                          qemu_version=settings.qemu_version).predict()


@pytest.fixture
def memhp_fuzz(memhp_settings: Settings, memhp_resolved_guest: Any,
               tmp_path: Path) -> Callable[..., Any]:
    """``memhp_fuzz(seed=0, sequences=2, steps=6, policies=("manual",),
    machines=("pc",), shrink_budget=20)``: a ``memhp fuzz`` campaign on the
    session's guest and QEMU (shrunk failures written under tmp_path);
    returns its :class:`harness.fuzz.engine.Summary`; ``memhp_fuzz.target``
    runs a scenario on the same guest and QEMU."""
    from harness.fuzz.engine import Settings as FuzzSettings
    from harness.fuzz.engine import Target, campaign

    target = Target(memhp_resolved_guest, memhp_settings.qemu, memhp_settings.accel,
                    memhp_settings.timeout_scale, memhp_settings.qemu_version)

    def run(**kw: Any) -> Any:
        kw.setdefault("sequences", 2)
        kw.setdefault("length", kw.pop("steps", 6))
        kw.setdefault("out", tmp_path / "fuzz")
        for key in ("policies", "machines"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return campaign(FuzzSettings(**kw), target, say=lambda msg: print(msg))

    run.target = target  # type: ignore[attr-defined]  # to replay a shrunk scenario
    return run
