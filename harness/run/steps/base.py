"""A step kind: one frozen class with its TOML key, its parser, its
precondition and its act.

- :attr:`Step.action` is the TOML key (``add = "dimm0:1G@1"``) and the
  step's name in results;
- :meth:`Step.parse` reads a ``[[step]]`` table (unknown keys, wrong types
  and bad values are :class:`UsageError` naming the key and the fix);
- :meth:`Step.check` is the precondition over a :class:`PlanCheck` (what
  the steps before it did: paused, pending unplugs, devices added), as a
  Hypothesis rule keeps its precondition beside it; :meth:`Step.advance`
  moves the plan on; both are pure, so a plan is checked before any VM
  starts and a generator can ask which steps may come next;
- :meth:`Step.act` does it on a running VM through a narrow
  :class:`harness.run.context.StepContext` and returns the mismatches only
  the act can see; observing and comparing afterwards is the runner's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import UsageError
from harness.model.spec import MachineSpec, Operation
from harness.toml_keys import refusal_key, splat_patterns, unknown
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext


@dataclass
class PlanCheck:
    """What the steps so far did, for the next step's precondition."""

    spec: MachineSpec
    index: int = 0  # the step being checked
    known: set[str] = field(default_factory=set)  # devices added (not refused)
    vmems: set[str] = field(default_factory=set)  # ... of them virtio-mem
    paused_at: int | None = None  # the pause step, while paused
    reset_paused: bool = False  # reset while paused: not booted until resume
    pending: list[str] = field(default_factory=list)  # unplugs not yet resolved
    resized_paused: list[str] = field(default_factory=list)  # virtio-mem resized while paused
    added_paused: set[str] = field(default_factory=set)  # devices added during this pause
    workloads: set[str] = field(default_factory=set)
    room: list[int] = field(default_factory=list)  # what each node can hold by now

    def __post_init__(self) -> None:
        if not self.room:
            self.room = list(self.spec.node_boot_bytes())
            for d in self.spec.coldplug:
                if 0 <= d.node < len(self.room):
                    self.room[d.node] += d.size
            self.known |= {d.id for d in self.spec.coldplug}

    @property
    def where(self) -> str:
        return f"step {self.index + 1}"

    def finish(self) -> None:
        """The run must end running, with no unplug unresolved."""
        if self.paused_at is not None:
            raise UsageError(f"the run ends paused (since step {self.paused_at + 1})",
                             value="pause", fix="end with resume = true")
        if self.pending:
            raise UsageError(f"the unplug of {', '.join(self.pending)} (wait = false) ends the "
                             "run unresolved", value=self.pending,
                             fix="add reset = true after it")


@dataclass(frozen=True)
class Step:
    """One action of the plan (a subclass per TOML key)."""

    action: ClassVar[str]  # the TOML key
    keys: ClassVar[frozenset[str]] = frozenset()  # the other keys its table takes
    guest: ClassVar[bool] = False  # needs the guest running (acts over SSH)
    # regexes of kernel splats this step may print
    expect_splat: tuple[str, ...] = field(default=(), kw_only=True)

    # -- the plan --------------------------------------------------------------
    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> Step:
        raise NotImplementedError

    @classmethod
    def read_common(cls, raw: Mapping[str, Any], where: str
                    ) -> tuple[str | None, tuple[str, ...]]:
        """What every step's table is read for first, in this order: unknown
        keys, ``expect_refusal`` (where the kind takes it), ``expect_splat``."""
        unknown(raw, {cls.action, "expect_splat", *cls.keys}, where)
        refusal = refusal_key(raw, where) if "expect_refusal" in cls.keys else None
        return refusal, splat_patterns(raw.get("expect_splat", []), f"{where}.expect_splat")

    @property
    def subject(self) -> str:
        """The device or workload the step names ("" for none)."""
        return ""

    def model_op(self) -> Operation | None:
        """The model's operation for this step (refused or not)."""
        return None

    @property
    def is_model_op(self) -> bool:
        """An operation that changes the memory devices (a refused one changes nothing)."""
        return False

    def check(self, plan: PlanCheck) -> None:
        """The precondition: a UsageError if the step cannot come here."""
        where = f"{plan.where} ({self.action})"
        if self.guest and plan.paused_at is not None:
            raise UsageError(f"{where} needs the guest running, but the VM is paused since "
                             f"step {plan.paused_at + 1}", value=self.action,
                             fix="put resume = true before it")
        if plan.pending and plan.paused_at is None and self.action != "reset":
            raise UsageError(f"{where}: remove with wait = false must be followed by reset",
                             value=plan.pending, fix="add reset = true right after it")

    def advance(self, plan: PlanCheck) -> None:
        """What the step changes in the plan."""

    def allowed(self, plan: PlanCheck) -> bool:
        try:
            self.check(plan)
        except UsageError:
            return False
        return True

    def to_table(self) -> dict[str, Any]:
        """The step's ``[[step]]`` table, as :meth:`parse` reads it back."""
        return self._with_common({self.action: True})

    def _with_common(self, table: dict[str, Any]) -> dict[str, Any]:
        refusal = getattr(self, "expect_refusal", None)
        if refusal is not None:
            table["expect_refusal"] = refusal or True
        if self.expect_splat:
            table["expect_splat"] = list(self.expect_splat)
        return table

    # -- the run ---------------------------------------------------------------
    def describe(self) -> str:
        return self.action

    def act(self, ctx: StepContext) -> list[Mismatch]:
        raise NotImplementedError
