"""The state of a plan while it is predicted, shared by every device kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.layout import Layout
from harness.model.spec import MachineSpec


@dataclass
class Plan:
    """The state a kind's model reads and changes while a plan is predicted."""

    spec: MachineSpec
    layout: Layout
    devices: list[Any] = field(default_factory=list)  # Placed, any kind, in plug order
    # hugepages (page size -> pages) kept by the files of removed devices
    kept: dict[int, int] = field(default_factory=dict)

    def of(self, kind: str) -> list[Any]:
        return [d for d in self.devices if d.kind == kind]

    def find(self, device_id: str) -> Any | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def replace(self, old: Any, new: Any | None) -> None:
        """Put ``new`` where ``old`` was (None: unplug it)."""
        i = self.devices.index(old)
        self.devices[i:i + 1] = [] if new is None else [new]
