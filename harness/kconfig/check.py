"""Will this kernel config do memory hotplug, and will new memory come
online by itself?  Requirements come from ``kconfigs/requirements.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.kconfig.source import kernel_version, parse_values
from harness.resources import kconfigs_dir

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
POLICIES = ("offline", "online", "online_kernel", "online_movable")


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning | info
    group: str
    option: str
    value: str
    why: str
    fix: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "group": self.group,
                "option": f"CONFIG_{self.option}", "value": self.value, "ok": self.ok,
                "why": self.why, "fix": self.fix}


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    online_policy: str  # offline | online | online_kernel | online_movable
    policy_source: str
    kernel_version: tuple[int, int] | None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Hot-add and online will work (no error-level finding failed)."""
        return not any(f.severity == "error" and not f.ok for f in self.findings)

    @property
    def auto_online(self) -> bool:
        return self.online_policy != "offline"

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "auto_online": self.auto_online, "online_policy": self.online_policy,
            "online_policy_source": self.policy_source,
            "kernel_version": ".".join(map(str, self.kernel_version))
            if self.kernel_version else None,
            "findings": [f.to_json() for f in self.findings], "notes": list(self.notes),
        }


def load_requirements(path: Path | None = None) -> dict[str, Any]:
    return tomllib.loads((path or kconfigs_dir() / "requirements.toml").read_text())


def online_policy(values: dict[str, str], cmdline: str = "",
                  reqs: dict[str, Any] | None = None) -> tuple[str, str]:
    """(policy, where it comes from) for hot-added memory."""
    reqs = reqs or load_requirements()
    for word in reversed(cmdline.split()):
        if word.startswith("memhp_default_state="):
            value = word.split("=", 1)[1]
            if value in POLICIES:
                return value, f"kernel parameter {word}"
    spec = reqs["online_policy"]
    for option, policy in spec["new_choice"].items():
        if values.get(option) == "y":
            return policy, f"CONFIG_{option}=y (Linux >= {spec['new_since']})"
    old = spec["old_option"]
    if values.get(old) == "y":
        return "online", f"CONFIG_{old}=y (Linux < {spec['new_since']}: kernel picks the zone)"
    if old in values or any(o in values for o in spec["new_choice"]):
        return "offline", "build default: offline"
    return "offline", "no default-online option set: offline"


def check_values(values: dict[str, str], *, cmdline: str = "",
                 version: tuple[int, int] | None = None) -> Report:
    reqs = load_requirements()
    findings = []
    for opt in reqs["option"]:
        value = values.get(opt["name"], "n")
        ok = value in opt["values"]
        findings.append(Finding(opt["severity"], opt["group"], opt["name"], value, opt["why"],
                                opt["fix"] if not ok else "", ok))
    notes = []
    for f in findings:
        if f.option in ("VIRTIO_NET", "VIRTIO_PCI", "FW_CFG_SYSFS") and f.value == "m":
            notes.append(f"CONFIG_{f.option}=m: boot with --modules (the default guest loads it)")
    policy, source = online_policy(values, cmdline, reqs)
    findings.sort(key=lambda f: (f.ok, SEVERITY_ORDER[f.severity], f.group))
    return Report(tuple(findings), policy, source, version, tuple(notes))


def check_config(text: str, *, cmdline: str = "") -> Report:
    """Check a ``.config`` text (see :func:`harness.kconfig.source.read_config`)."""
    return check_values(parse_values(text), cmdline=cmdline, version=kernel_version(text))
