"""The guest kernel's side of the model: policy inputs, versioned rules and
the memory-block state machine (pure, no I/O)."""

from harness.model.kernel.inputs import (
    ONLINE_TYPES,
    KernelPolicy,
    ZoneInfo,
    cmdline_params,
    parse_kernel_version,
    policy_from_guest,
)
from harness.model.kernel.memory import BlockState, KernelMemory, Outcome
from harness.model.kernel.rules import KernelRules, UnmodelledKernel, rules_for

__all__ = [
    "ONLINE_TYPES", "BlockState", "KernelMemory", "KernelPolicy", "KernelRules", "Outcome",
    "UnmodelledKernel", "ZoneInfo", "cmdline_params", "parse_kernel_version",
    "policy_from_guest", "rules_for",
]
