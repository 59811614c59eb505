"""What every acquisition check returns, and the lung-field geometry they measure on.

A check is a plain function that returns a :class:`CheckResult`: pass, fail or cannot tell, the
measured value with its unit, and the threshold it was held to.  Geometry is measured on the
analysis grid (the square grid of the input gate), with vertical and horizontal lengths scaled
back to the source's proportions where a ratio mixes them.

Sides are the patient's: on a frontal radiograph displayed as usual (PA or AP) the patient's
right is on the image's left, so lung field 1 of ``ChestRegion.lung_labels`` (image left) is
the right lung.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class CheckStatus(str, Enum):
    """Outcome of one acquisition check."""

    PASS = "pass"
    FAIL = "fail"
    CANNOT_TELL = "cannot_tell"
    """The image does not show what the check measures (e.g. one lung field was not found)."""


#: the checks, in report order; each has a module of its own
CHECKS = ("anatomy_cut_off", "rotation", "inspiration", "exposure", "collimation")


@dataclass(frozen=True)
class CheckResult:
    """One check on one image.

    ``value`` is the measured quantity in ``unit`` (None when it could not be measured);
    ``threshold`` the configured limit it was held to and ``rule`` how, in words
    ("fail below 0.015"); ``findings`` the check's own details (e.g. which landmarks are cut off);
    ``reason`` why a check could not tell.
    """

    check: str
    status: CheckStatus
    value: float | None
    unit: str
    threshold: float | tuple[float, float] | None
    rule: str
    findings: dict = field(default_factory=dict)
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f'Argument "check" must be one of {CHECKS}, got {self.check!r}')
        object.__setattr__(self, "status", CheckStatus(self.status))
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAIL

    def to_dict(self) -> dict:
        threshold = list(self.threshold) if isinstance(self.threshold, tuple) else self.threshold
        return {"status": self.status.value, "value": None if self.value is None else round(self.value, 4),
                "unit": self.unit, "threshold": threshold, "rule": self.rule, "findings": self.findings,
                "reason": self.reason}


def cannot_tell(check: str, unit: str, threshold, rule: str, reason: str) -> CheckResult:
    return CheckResult(check, CheckStatus.CANNOT_TELL, None, unit, threshold, rule, reason=reason)


SIDES = ("right", "left")  # patient sides of lung labels 1 (image left) and 2 (image right)


@dataclass(frozen=True)
class LungBox:
    """Extent of one lung field on the grid: rows ``top``..``bottom``, columns ``left``..``right``
    (inclusive pixel indices)."""

    side: str
    top: int
    bottom: int
    left: int
    right: int
    mask: np.ndarray = field(repr=False)


def lung_boxes(labels: np.ndarray | None) -> dict[str, LungBox]:
    """The lung fields of ``labels`` by patient side; a side with no pixels is left out."""
    boxes: dict[str, LungBox] = {}
    if labels is None:
        return boxes
    for value, side in enumerate(SIDES, start=1):
        mask = labels == value
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        boxes[side] = LungBox(side, int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]), mask)
    return boxes
