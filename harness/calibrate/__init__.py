"""``memhp calibrate`` and what later runs learn from it.

:func:`model_status` is asked once per run: which of the run's QEMU and
guest kernel run on extrapolated rules (:mod:`harness.model.versions`),
and which of those a clean calibration of this very binary or kernel
vouches for (:mod:`.record`), so the run carries no flag for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.model.versions import Extrapolation, kernel_extrapolation, qemu_extrapolation


@dataclass
class ModelStatus:
    """The model's standing for one run."""

    extrapolated: list[Extrapolation] = field(default_factory=list)
    calibrated: dict[str, str] = field(default_factory=dict)  # component -> record summary

    def lines(self) -> list[str]:
        out = [e.message() + " (memhp calibrate checks it)" for e in self.extrapolated]
        out += [f"model calibrated for {k} {v}" for k, v in self.calibrated.items()]
        return out

    def behind(self) -> list[str]:
        return [e.behind() for e in self.extrapolated]

    def to_json(self) -> dict[str, Any]:
        return {"extrapolated_from": {e.component: e.to_json()["rules_of"]
                                     for e in self.extrapolated},
                "extrapolations": [e.to_json() for e in self.extrapolated],
                "calibrated": dict(self.calibrated)}


def _major_minor(text: str) -> tuple[int, int] | None:
    """``11.1.3`` -> (11, 1), as the model's own version parser reads it."""
    from harness.errors import UsageError
    from harness.model.qemu_rules import parse_qemu_version

    try:
        return parse_qemu_version(text)
    except UsageError:
        return None


def model_status(*, qemu_binary: str | None, qemu_version: str,
                 kernel_image: Path | None = None, kernel_release: str | None = None,
                 cache: Path | None = None) -> ModelStatus:
    """Extrapolations of this run's QEMU and kernel, less the calibrated ones."""
    from harness.calibrate.record import clean_kernel_record, clean_qemu_record
    from harness.errors import UsageError
    from harness.model.kernel.inputs import parse_kernel_version

    status = ModelStatus()
    qv = _major_minor(qemu_version)
    if qv is not None:
        try:
            ext = qemu_extrapolation(qv)
        except UsageError:  # a QEMU older than 7.2 is refused elsewhere
            ext = None
        if ext is not None:
            rec = clean_qemu_record(qemu_binary, qemu_version, cache) if qemu_binary else None
            if rec is None:
                status.extrapolated.append(ext)
            else:
                status.calibrated["QEMU"] = f"{qemu_version} ({rec.summary})"
    if kernel_release:
        try:
            kv = parse_kernel_version(kernel_release)
            ext = kernel_extrapolation(kv)
        except ValueError:
            ext = None
        if ext is not None:
            rec = (clean_kernel_record(kernel_image, kernel_release, cache)
                   if kernel_image is not None and kernel_image.is_file() else None)
            if rec is None:
                status.extrapolated.append(ext)
            else:
                status.calibrated["Linux"] = f"{kernel_release} ({rec.summary})"
    return status
