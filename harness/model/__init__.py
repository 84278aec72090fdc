"""The reference model: pure, no I/O.  See :mod:`.layout` and :mod:`.predict`."""

from harness.model.layout import Layout, compute_layout, default_block_size, ram_split
from harness.model.predict import (
    NodeTotals,
    PlacedDimm,
    Prediction,
    StepPrediction,
    expected_zone,
    predict,
)
from harness.model.spec import (
    AddDimm,
    AddVirtioMem,
    MachineSpec,
    Operation,
    RemoveDimm,
    ResizeVirtioMem,
    check_id,
    parse_dimm_option,
    parse_memory_option,
    parse_numa_option,
)

__all__ = [
    "AddDimm", "AddVirtioMem", "Layout", "MachineSpec", "NodeTotals", "Operation",
    "PlacedDimm", "Prediction", "RemoveDimm", "ResizeVirtioMem", "StepPrediction",
    "check_id", "compute_layout", "default_block_size", "expected_zone", "parse_dimm_option",
    "parse_memory_option", "parse_numa_option", "predict", "ram_split",
]
