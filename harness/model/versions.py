"""Which rules the model uses for a QEMU and a guest kernel, and whether
they were read from that version or are the newest rules applied to a
newer one (*extrapolated*).

memhp never refuses a version newer than the sources its rules were read
from: it runs on the newest rules and says so (the run's first lines, the
result's ``model.extrapolated_from``), and when the guest or QEMU then
disagrees with the model, the verdict names the rule set in force, since
the model may be behind that version.  A clean ``memhp calibrate`` of the
binary or kernel lifts the flag (:mod:`harness.calibrate.record`).

Pure: it only asks the rule modules.
"""

from __future__ import annotations

from dataclasses import dataclass


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class Extrapolation:
    """``component`` ``version`` runs on the rules read from ``rules_of``."""

    component: str  # "qemu", "kernel", "virtio-mem driver"
    version: tuple[int, int]
    rules_of: tuple[int, int]
    rule: str  # the rule set in force, with its source

    @property
    def label(self) -> str:
        return {"qemu": "QEMU", "kernel": "Linux",
                "virtio-mem driver": "the virtio-mem driver of Linux"}[self.component]

    def message(self) -> str:
        side = "newer than the newest" if self.version > self.rules_of else \
            "older than the oldest"
        return (f"model extrapolated: {self.label} {_v(self.version)} is {side} "
                f"{self.label} read ({_v(self.rules_of)}); using {_v(self.rules_of)}'s rules")

    def behind(self) -> str:
        return (f"the model may be behind {self.label} {_v(self.version)}: the rules in "
                f"force are {_v(self.rules_of)}'s ({self.rule})")

    def to_json(self) -> dict[str, str]:
        return {"component": self.component, "version": _v(self.version),
                "rules_of": _v(self.rules_of), "rule": self.rule}


def qemu_extrapolation(version: tuple[int, int]) -> Extrapolation | None:
    """Non-None when QEMU ``version`` runs on another version's rules."""
    from harness.model.qemu_rules import rules_for

    rules = rules_for(version)
    return _flag("qemu", version, rules.extrapolated_from,
                 "; ".join(rules.sources[:2]) or "QEMU rules")


def kernel_extrapolation(version: tuple[int, int]) -> Extrapolation | None:
    """Non-None when Linux ``version`` runs on another version's rules."""
    from harness.model.kernel.rules import rules_for

    rules = rules_for(version)
    return _flag("kernel", version, getattr(rules, "extrapolated_from", None),
                 f"{rules.name}: {rules.source}")


def _flag(component: str, version: tuple[int, int], source: tuple[int, int] | None,
          rule: str) -> Extrapolation | None:
    if source is None:
        return None
    return Extrapolation(component, (version[0], version[1]), (source[0], source[1]), rule)
