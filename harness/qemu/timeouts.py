"""How long memhp waits for QEMU and the guest (one table for every part
of a VM: process, boot, hotplug, migration)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Base timeouts in seconds (KVM-sized); scaled by :attr:`scale`."""

    scale: float = 1.0
    qmp_connect: float = 10.0
    boot: float = 60.0
    ssh: float = 20.0
    command: float = 60.0
    hot_add: float = 15.0
    unplug: float = 30.0
    shutdown: float = 5.0
    migrate: float = 60.0

    def s(self, name: str) -> float:
        value: float = getattr(self, name)
        return value * self.scale

    @classmethod
    def for_accel(cls, accel: str, user_scale: float = 1.0) -> Timeouts:
        # TCG emulates the guest CPU: boots and sysfs walks are several
        # times slower than under KVM.
        return cls(scale=(4.0 if accel == "tcg" else 1.0) * user_scale)
