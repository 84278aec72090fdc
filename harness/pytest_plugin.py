"""memhp's pytest plugin (entry point ``pytest11: memhp``).

Reads top to bottom: options (each with an ini twin and an environment
variable), configure (markers, settings resolved once into
``config.stash``), run hooks (KVM skips, failure reports), fixtures.

Settings are resolved option > environment (``MEMHP_*``) > ini.  Bad values
raise :class:`pytest.UsageError` before any test runs.

Fixtures:

``memhp_settings``  the resolved settings (session)
``memhp_guest_image``  the default guest image or the user's kernel (session)
``memhp_accel``  the accelerator choice with its reason (session)
``memhp_vm_factory``  ``factory(**machine) -> VM``: boots a VM, ended at teardown
``memhp_vm``  a VM for the test's ``@pytest.mark.memhp_machine(...)``
``memhp_guest``  ``memhp_vm.guest`` (typed readers over SSH)
``memhp_model``  the model's prediction for the test's machine (no DIMMs)

On failure the report carries the serial tail, ``dmesg``, the QMP
transcript tail and any model-vs-guest mismatches the test recorded
(sections in the terminal, properties in JUnit XML), and the VM's full
artifacts are kept under ``--memhp-artifacts``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError

# -- options ------------------------------------------------------------------

_OPTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("kernel", "Guest kernel (bzImage) instead of the default guest's.", None),
    ("modules", "Modules tree for --memhp-kernel.", None),
    ("kernel-config", "Build config of --memhp-kernel (default: found beside it or IKCONFIG).",
     None),
    ("kernel-package", "Debian kernel package to boot, NAME[/SUITE], e.g. "
                       "linux-image-amd64/bookworm-backports (fetched, never installed).", None),
    ("disk", "Boot this disk image (snapshot mode) instead of kernel+initramfs.", None),
    ("ssh-key", "SSH private key for --memhp-disk.", None),
    ("ssh-host-key", "Public host key of the --memhp-disk guest to pin (else pinned on "
                     "first use).", None),
    ("ssh-user", "SSH user for --memhp-disk.", "root"),
    ("qemu", "QEMU binary, or debian:10.0 (fetched into memhp's cache, see README).",
     "qemu-system-x86_64"),
    ("qemu-version", "Model this QEMU version (MAJOR.MINOR) instead of the one --memhp-qemu "
                     "reports, as memhp run --qemu-version.", None),
    ("machine", "Machine type (pc or q35) for tests that do not pin one (CI matrices).",
     "pc"),
    ("accel", "Accelerator: auto (probe KVM, fall back to TCG), kvm or tcg.", "auto"),
    ("artifacts", "Directory for the artifacts of failed tests.", "memhp-artifacts"),
    ("timeout-scale", "Multiply every VM timeout by this factor.", "1.0"),
    ("boot-attempts", "Boots in all when a VM's boot hangs (no ready marker by the deadline, "
                      "no panic); each hung boot is reported as a warning.", "2"),
    ("shard", "Run only shard I of N of the VM tests, as I/N (deterministic).", None),
    ("cold-boot", "Always boot VMs: no warm start from a saved state of the same inputs "
                  "(true/false).", "false"),
)


def _ini(name: str) -> str:
    return "memhp_" + name.replace("-", "_")


def _env(name: str) -> str:
    return "MEMHP_" + name.replace("-", "_").upper()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memhp", "memory hotplug VMs")
    for name, help_text, default in _OPTIONS:
        full = f"{help_text} (ini: {_ini(name)}, env: {_env(name)}; default: {default})"
        group.addoption(f"--memhp-{name}", dest=_ini(name), default=None, help=full)
        parser.addini(_ini(name), help=full, default=default)


@dataclass(frozen=True)
class Settings:
    kernel: Path | None
    modules: Path | None
    disk: Path | None
    ssh_key: Path | None
    ssh_host_key: Path | None
    ssh_user: str
    qemu: str
    accel: str
    artifacts: Path
    timeout_scale: float
    shard: tuple[int, int] | None
    machine: str = "pc"
    kernel_config: Path | None = None
    kernel_package: str | None = None
    qemu_version: tuple[int, int] | None = None  # the binary's, for the model's rules
    cold_boot: bool = False  # never start VMs from a saved state (harness.warm)
    boot_attempts: int = 2  # boots in all when one hangs (harness.qemu.vm.VM.boot)


SETTINGS_KEY = pytest.StashKey[Settings]()


def _resolve(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(_ini(name))
    if value is None:
        value = os.environ.get(_env(name))
    if value is None:
        value = config.getini(_ini(name)) or None
    return value


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _parse_attempts(raw: str) -> int:
    # ASCII digits only: '²'.isdigit() is True, and int('²') raises.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10:
        raise pytest.UsageError(
            f"--memhp-boot-attempts={raw!r}: give a whole number from 1 to 10")
    return int(raw)


def resolve_settings(config: pytest.Config) -> Settings:
    accel = _resolve(config, "accel") or "auto"
    if accel not in ("auto", "kvm", "tcg"):
        raise pytest.UsageError(f"--memhp-accel={accel!r}: use auto, kvm or tcg")
    raw_scale = _resolve(config, "timeout-scale") or "1.0"
    try:
        scale = float(raw_scale)
    except ValueError:
        raise pytest.UsageError(
            f"--memhp-timeout-scale={raw_scale!r} is not a number (e.g. 2.5)") from None
    if not 0.1 <= scale <= 100:
        raise pytest.UsageError(f"--memhp-timeout-scale={scale} is outside 0.1..100")
    shard = None
    raw_shard = _resolve(config, "shard")
    if raw_shard:
        m = re.fullmatch(r"(\d+)/(\d+)", raw_shard)
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise pytest.UsageError(
                f"--memhp-shard={raw_shard!r}: give I/N with 1 <= I <= N, e.g. 2/4")
        shard = (int(m.group(1)), int(m.group(2)))
    machine = _resolve(config, "machine") or "pc"
    if machine not in ("pc", "q35"):
        raise pytest.UsageError(f"--memhp-machine={machine!r}: use pc or q35")
    qemu, qemu_ver = _resolve_qemu(_resolve(config, "qemu") or "qemu-system-x86_64")
    raw_version = _resolve(config, "qemu-version")
    if raw_version:
        from harness.model.qemu_rules import parse_qemu_version

        try:
            qemu_ver = parse_qemu_version(raw_version)
        except HarnessError as exc:
            raise pytest.UsageError(f"--memhp-qemu-version={raw_version!r}: {exc}") from exc
    attempts = _parse_attempts(_resolve(config, "boot-attempts") or "2")
    raw_cold = (_resolve(config, "cold-boot") or "false").strip().lower()
    if raw_cold not in ("true", "false", "1", "0", "yes", "no"):
        raise pytest.UsageError(f"--memhp-cold-boot={raw_cold!r}: use true or false")
    settings = Settings(
        machine=machine,
        kernel=_path(_resolve(config, "kernel")), modules=_path(_resolve(config, "modules")),
        disk=_path(_resolve(config, "disk")),
        ssh_key=_path(_resolve(config, "ssh-key")),
        ssh_host_key=_path(_resolve(config, "ssh-host-key")),
        ssh_user=_resolve(config, "ssh-user") or "root",
        qemu=qemu, accel=accel,
        artifacts=_path(_resolve(config, "artifacts")) or Path("memhp-artifacts"),
        timeout_scale=scale, shard=shard, qemu_version=qemu_ver,
        kernel_config=_path(_resolve(config, "kernel-config")),
        kernel_package=_resolve(config, "kernel-package"),
        cold_boot=raw_cold in ("true", "1", "yes"),
        boot_attempts=attempts,
    )
    if settings.disk is not None and settings.kernel is not None:
        raise pytest.UsageError("--memhp-disk and --memhp-kernel cannot be combined")
    if settings.disk is not None and settings.ssh_key is None:
        raise pytest.UsageError("--memhp-disk needs --memhp-ssh-key")
    for label, path in (("kernel", settings.kernel), ("disk", settings.disk)):
        if path is not None and not path.is_file():
            raise pytest.UsageError(f"--memhp-{label}={str(path)!r} is not a file")
    return settings


# -- configure ----------------------------------------------------------------------

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


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The model's standing for the run's QEMU: extrapolated or calibrated."""
    from harness.calibrate import model_status

    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or settings.qemu_version is None:
        return []
    version = ".".join(map(str, settings.qemu_version))
    status = model_status(qemu_binary=settings.qemu, qemu_version=version)
    config.stash[BEHIND_KEY] = status.behind()
    return [f"memhp: {line}" for line in status.lines()]


BEHIND_KEY = pytest.StashKey[list[str]]()


# -- run hooks ---------------------------------------------------------------------------

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


_VMS_KEY = pytest.StashKey[list[Any]]()
MISMATCH_KEY = pytest.StashKey[list[Any]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when != "call" or not report.failed:
        return report
    for vm in item.stash.get(_VMS_KEY, []):
        vm.mark_failed()
        tail = vm.serial_tail(60)
        if tail:
            report.sections.append((f"memhp serial console ({vm.config.name})", tail))
            item.user_properties.append((f"memhp.serial_tail.{vm.config.name}", tail))
        dmesg = _dmesg(vm)
        if dmesg:
            report.sections.append((f"memhp dmesg ({vm.config.name})", dmesg))
            item.user_properties.append((f"memhp.dmesg.{vm.config.name}", dmesg))
        qmp = _qmp_tail(vm)
        if qmp:
            report.sections.append((f"memhp QMP transcript ({vm.config.name})", qmp))
            item.user_properties.append((f"memhp.qmp.{vm.config.name}", qmp))
        item.user_properties.append((f"memhp.artifacts.{vm.config.name}",
                                     str(vm.artifacts_dir / vm.config.name)
                                     if vm.artifacts_dir else ""))
    mism = item.stash.get(MISMATCH_KEY, [])
    if mism:
        text = "\n".join([str(m) for m in mism] + item.config.stash.get(BEHIND_KEY, []))
        report.sections.append(("memhp model vs guest", text))
        item.user_properties.append(("memhp.mismatches", text))
    return report


def _dmesg(vm: Any) -> str:
    if vm.shell is None:
        return ""
    try:
        res = vm.shell.run(["dmesg"], timeout=10, check=False)
    except Exception:  # noqa: BLE001 - the VM may be the thing that broke
        return ""
    return "\n".join(res.stdout.splitlines()[-80:])


def _qmp_tail(vm: Any) -> str:
    if vm.paths is None:
        return ""
    try:
        lines = vm.paths.qmp_transcript.read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-40:])


def record_mismatches(request: pytest.FixtureRequest, mismatches: list[Any]) -> None:
    """Let a test attach model-vs-guest mismatches to its failure report."""
    request.node.stash.setdefault(MISMATCH_KEY, []).extend(mismatches)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def memhp_settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def memhp_resolved_guest(memhp_settings: Settings) -> Any:
    """The guest every VM boots (built once; the cache is shared safely by
    xdist workers through a file lock)."""
    from harness.launch import GuestSource, resolve_guest

    s = memhp_settings
    try:
        return resolve_guest(GuestSource(kernel=s.kernel, modules=s.modules, disk=s.disk,
                                         ssh_user=s.ssh_user, ssh_key=s.ssh_key,
                                         ssh_host_key=s.ssh_host_key,
                                         kernel_config=s.kernel_config,
                                         kernel_package=s.kernel_package))
    except HarnessError as exc:
        pytest.fail(f"memhp: cannot prepare the guest: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def memhp_guest_image(memhp_resolved_guest: Any) -> Any:
    if memhp_resolved_guest.image is None:
        pytest.skip("the guest is a user disk image, not a memhp image")
    return memhp_resolved_guest.image


@pytest.fixture(scope="session")
def memhp_accel(memhp_settings: Settings, memhp_resolved_guest: Any) -> Any:
    from harness.launch import pick_accel

    return pick_accel(memhp_settings.accel, memhp_resolved_guest, memhp_settings.qemu)


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
                     memhp_resolved_guest: Any, memhp_accel: Any) -> Iterator[VMFactory]:
    """``factory(machine=..., memory=..., numa=..., append=(), smp=2, coldplug=(),
    cold_boot=False)`` starts a VM (``coldplug``: ``ID:SIZE@NODE`` DIMMs on its
    command line): from a saved state of the same inputs (harness.warm) unless
    ``cold_boot``, the test's ``memhp_cold_boot`` marker, ``--memhp-cold-boot``
    or a ``--memhp-kernel`` under test ask for a real boot."""
    from contextlib import ExitStack

    from harness.launch import launch_vm
    from harness.scenario import build_scenario

    stack = ExitStack()
    vms: list[Any] = request.node.stash.setdefault(_VMS_KEY, [])
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40] or "t"
    if not name[0].isalpha():
        name = "t" + name

    warm = not (memhp_settings.cold_boot or memhp_settings.kernel is not None
                or request.node.get_closest_marker("memhp_cold_boot") is not None)

    def factory(machine: str | None = None, memory: str = "6G,slots=32,maxmem=32G",
                numa: str | None = "3G,3G", append: tuple[str, ...] = (), smp: int = 2,
                coldplug: tuple[Any, ...] = (), cold_boot: bool = False) -> Any:
        scenario = build_scenario(name=name, machine=machine or memhp_settings.machine,
                                  memory=memory, numa=numa, coldplug=coldplug,
                                  steps=[], smp=smp, append=append,
                                  qemu_version=memhp_settings.qemu_version)
        vm, _ = stack.enter_context(launch_vm(
            scenario, memhp_resolved_guest, accel=memhp_accel.accel,
            qemu_binary=memhp_settings.qemu, artifacts_on_failure=memhp_settings.artifacts,
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
            _warn_boot_retries(request.node, vm)


class MemhpBootRetry(pytest.PytestWarning):
    """A VM's boot hung and was retried (see VM.boot): shown in the warnings
    summary, so a passing run still says so."""


def _warn_boot_retries(item: pytest.Item, vm: Any) -> None:
    for n, hang in enumerate(vm.boot_retries, 1):
        text = (f"{vm.config.name}: {hang['when']}, boot attempt {hang['attempt']} hung "
                f"after {hang['seconds']:.0f}s ({hang['cpus']})")
        item.user_properties.append((f"memhp.boot_retry.{vm.config.name}.{n}",
                                     f"{text}\n{hang['serial_tail']}"))
        item.warn(MemhpBootRetry(text))


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


def _resolve_qemu(text: str) -> tuple[str, tuple[int, int] | None]:
    """``--memhp-qemu`` as the CLI's ``--qemu``: a binary, or debian:X.Y fetched
    (harness.qemu.fetch); with its version for the model's rules."""
    from harness.errors import HarnessError
    from harness.qemu.fetch import resolve_qemu
    from harness.session import qemu_version

    try:
        binary = resolve_qemu(text)
    except HarnessError as exc:
        raise pytest.UsageError(f"--memhp-qemu={text!r}: {exc}") from exc
    detected = qemu_version(binary)
    parts = detected.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return binary, None
    return binary, (int(parts[0]), int(parts[1]))


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
    from harness.host.hugepage_reserve import reserved
    from harness.host.hugepages import HostCannot
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
                          memory=kw.get("memory", "6G,slots=32,maxmem=32G"),
                          numa=kw.get("numa", "3G,3G"), steps=[],
                          qemu_version=settings.qemu_version).predict()
