"""The vCPU facts QEMU's memory layout depends on: vendor and phys-bits.

* Vendor: ``builtin_x86_defs[]`` in target/i386/cpu.c (v7.2.0, v10.0.0)
  gives each named model its vendor; ``max`` is AMD under TCG
  (``max_x86_cpu_initfn()`` sets ``vendor=AuthenticAMD`` for every
  accelerator but KVM/HVF); ``host`` is the host's.  ``vendor=`` overrides.
  Only AMD matters: ``IS_AMD_CPU()`` gates the 1 TiB relocation in
  hw/i386/pc.c ``pc_memory_init()``.
* phys-bits: ``phys-bits=N`` if given, else TCG_PHYS_ADDR_BITS = 40
  (``x86_cpu_realizefn()``, target/i386/cpu.c, v7.2.0 and v10.0.0); under
  KVM ``-cpu host`` uses the host's (``host-phys-bits``), which the caller
  reads from ``/proc/cpuinfo`` and passes in.
* Long mode: ``lm=off`` (or ``-lm``) makes the vCPU 32-bit; then
  ``x86_cpu_realizefn()`` refuses a user-set phys-bits ("phys-bits is not
  user-configurable in 32 bit") and sets 36 with PSE36 (every 64-bit model
  has it), else 32 (v7.2.0, v10.0.2; checked on the 7.2, 10.0 and 11.1
  binaries with qemu64, max, EPYC, Skylake-Client, Opteron_G1, kvm64).
  Which address QEMU then checks against phys-bits depends on the QEMU and
  machine-type version (``QemuRules.gpa_32bit``, :mod:`harness.model.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import UsageError

Vendor = Literal["AMD", "Intel", "other"]
TCG_PHYS_ADDR_BITS = 40
# x86_cpu_realizefn(): a 32-bit (lm=off) vCPU with CPUID_PSE36
PSE36_PHYS_ADDR_BITS = 36

# 64-bit models of builtin_x86_defs[] (target/i386/cpu.c v10.0.0; v7.2.0
# has a subset).  Versioned names (EPYC-v4, Skylake-Client-IBRS) share
# their base model's vendor.
_VENDORS: dict[str, Vendor] = {
    "qemu64": "AMD", "phenom": "AMD", "Opteron_G1": "AMD", "Opteron_G2": "AMD",
    "Opteron_G3": "AMD", "Opteron_G4": "AMD", "Opteron_G5": "AMD", "EPYC": "AMD",
    "EPYC-Rome": "AMD", "EPYC-Milan": "AMD", "EPYC-Genoa": "AMD", "max": "AMD",
    "core2duo": "Intel", "kvm64": "Intel", "Conroe": "Intel", "Penryn": "Intel",
    "Nehalem": "Intel", "Westmere": "Intel", "SandyBridge": "Intel", "IvyBridge": "Intel",
    "Haswell": "Intel", "Broadwell": "Intel", "Skylake-Client": "Intel",
    "Skylake-Server": "Intel", "Cascadelake-Server": "Intel", "Cooperlake": "Intel",
    "Icelake-Server": "Intel", "SapphireRapids": "Intel", "GraniteRapids": "Intel",
    "SierraForest": "Intel", "Denverton": "Intel", "Snowridge": "Intel",
    "KnightsMill": "Intel", "Dhyana": "other", "YongFeng": "other",
}
# 32-bit models: no long mode, so no 64-bit PCI hole (pc_max_used_gpa()).
_32BIT = {"qemu32", "kvm32", "486", "pentium", "pentium2", "pentium3", "athlon", "coreduo",
          "n270"}
_VENDOR_IDS: dict[str, Vendor] = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}


@dataclass(frozen=True)
class CpuSpec:
    """What the layout needs of ``-cpu``: vendor and physical address bits."""

    vendor: Vendor = "AMD"
    phys_bits: int = TCG_PHYS_ADDR_BITS
    model: str = "qemu64"
    long_mode: bool = True  # False: lm=off, a 32-bit vCPU

    def __post_init__(self) -> None:
        if self.vendor not in ("AMD", "Intel", "other"):
            raise UsageError(f"CPU vendor {self.vendor!r} unknown", value=self.vendor,
                             fix="AMD, Intel or other")
        # target/i386/cpu.c x86_cpu_realizefn(): "phys-bits should be between
        # 32 and TARGET_PHYS_ADDR_SPACE_BITS (52)".
        if not 32 <= self.phys_bits <= 52:
            raise UsageError(f"phys-bits={self.phys_bits} is outside 32..52", value=self.phys_bits,
                             fix="e.g. phys-bits=40 (TCG's default) or 46")

    @property
    def is_amd(self) -> bool:
        return self.vendor == "AMD"


def default_cpu(accel: str = "tcg") -> CpuSpec:
    """memhp's own ``-cpu max`` under TCG (harness.qemu.config.cpu_model)."""
    return CpuSpec("AMD", TCG_PHYS_ADDR_BITS, "max")


def _base_vendor(model: str) -> Vendor | None:
    best = ""
    for name in _VENDORS:
        if (model == name or model.startswith(name + "-")) and len(name) > len(best):
            best = name
    return _VENDORS[best] if best else None


def parse_cpu_option(text: str, *, host: CpuSpec | None = None) -> CpuSpec:
    """``-cpu`` as QEMU takes it: ``MODEL[,phys-bits=N][,vendor=ID]``, or
    memhp's short ``amd``/``intel`` ``[,phys-bits=N]``.  ``host`` needs the
    host's facts (``host=``), as the model does no I/O."""
    parts = [p.strip() for p in text.split(",")]
    model = parts[0]
    fix = "e.g. --cpu max, --cpu EPYC,phys-bits=48, --cpu intel,phys-bits=46"
    vendor: Vendor | None
    phys_bits = TCG_PHYS_ADDR_BITS
    long_mode = True
    if model.lower() in ("amd", "intel"):
        vendor = "AMD" if model.lower() == "amd" else "Intel"
    elif model == "host":
        if host is None:
            raise UsageError("-cpu host takes the host's vendor and phys-bits, which the model "
                             "is not given", value=text, fix="name them: --cpu intel,phys-bits=46")
        vendor, phys_bits = host.vendor, host.phys_bits
    elif model in _32BIT:
        raise UsageError(f"CPU model {model!r} is 32-bit: not modelled", value=text, fix=fix)
    else:
        vendor = _base_vendor(model)
        if vendor is None:
            raise UsageError(f"CPU model {model!r} is not known to the model", value=text, fix=fix)
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key == "phys-bits":
            if not (sep and value.isascii() and value.isdigit() and len(value) <= 3):
                raise UsageError(f"phys-bits={value!r} is not a number of bits", value=text,
                                 fix="e.g. --cpu max,phys-bits=40")
            phys_bits = int(value)
        elif key == "vendor" and sep:
            vendor = _VENDOR_IDS.get(value, "other")
        elif (key == "lm" and value in ("off", "false", "no")) or part == "-lm":
            long_mode = False
        elif key in ("host-phys-bits", "host-phys-bits-limit"):
            raise UsageError(f"{key} depends on the host; not modelled", value=text,
                             fix="give phys-bits=N instead")
        # Other properties (features, migratable, ...) do not change the layout.
    if not long_mode:
        if any(p.partition("=")[0] == "phys-bits" for p in parts[1:]):
            # x86_cpu_realizefn() (v7.2.0, v10.0.2): QEMU exits at start-up
            raise UsageError("phys-bits cannot be set on a 32-bit vCPU (lm=off): QEMU exits "
                             "with 'phys-bits is not user-configurable in 32 bit'",
                             value=text, fix="drop phys-bits= (lm=off has 36) or lm=off")
        if model == "host":
            raise UsageError("-cpu host,lm=off is not modelled", value=text,
                             fix="name a model, e.g. --cpu qemu64,lm=off")
        phys_bits = PSE36_PHYS_ADDR_BITS
    return CpuSpec(vendor, phys_bits, model, long_mode)


def host_cpu_from_cpuinfo(text: str) -> CpuSpec | None:
    """The host's vendor and physical address bits from ``/proc/cpuinfo``
    text (for ``-cpu host`` under KVM); None if they are not there."""
    vendor: Vendor | None = None
    bits: int | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and vendor is None:
            vendor = _VENDOR_IDS.get(value, "other")
        elif key == "address sizes" and bits is None:
            word = value.split(" bits physical")[0]
            if word.isascii() and word.isdigit():
                bits = int(word)
    if vendor is None or bits is None:
        return None
    return CpuSpec(vendor, bits, "host")
