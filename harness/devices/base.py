"""What a device kind is to the model: a :class:`DeviceModel` that applies
its operations to a :class:`harness.model.plan.Plan` (pure, no I/O), and the placed records
it leaves there.

Each kind lives in its own package (``harness/devices/<kind>/``):

- ``ops.py`` -- its operations (frozen dataclasses with ``kind`` and
  ``label`` class attributes) and their text syntax;
- ``model.py`` -- ``MODEL``: placement in QEMU's check order, the unplug
  refusals, the fields compared with QEMU's ``query-memory-devices``;
- ``qemu.py`` -- its QEMU records: command line and QMP arguments, the
  properties pinned on a migration destination, the QEMU-side view;
- ``live.py`` -- its acts on a running VM (QMP, SSH), given a narrow
  context by :mod:`harness.run`.

Only ``ops.py`` and ``model.py`` are pure; :mod:`harness.model` imports
nothing else (tests/unit/test_layers.py keeps it so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from harness.model.plan import Plan


class Placed(Protocol):
    """A memory device as the model places it."""

    kind: str
    id: str
    addr: int
    size: int
    node: int

    @property
    def end(self) -> int: ...

    @property
    def hotplug_bytes(self) -> int:
        """Bytes the guest gains once all of it is online, as far as QEMU's
        side decides (0 where a guest driver decides)."""
        ...

    def to_json(self) -> dict[str, Any]: ...


class DeviceModel(Protocol):
    """A device kind's pure model (``harness/devices/<kind>/model.py: MODEL``)."""

    kind: str
    # fields of the kind's QEMU record compared exactly with the model's
    compared: tuple[str, ...]

    def apply(self, plan: Plan, op: Any) -> None:
        """Add, resize, ... one device per ``op`` (``op.kind`` is this kind),
        or raise PlanRefused in QEMU's words."""
        ...

    def unplug(self, plan: Plan, device: Any) -> None:
        """``device_del`` of ``device``: refuse, or take it out of ``plan``."""
        ...
