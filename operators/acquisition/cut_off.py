"""Anatomy cut off: lung apices, lateral lung edges or costophrenic angles outside the exposed field.

Per side, three landmarks of the lung field are held against the exposed field's box (the image
border, or the collimator shutter where there is one):

* apex: the lung field's top row against the field's top;
* lateral edge: its outer column (image left for the right lung) against that side of the field;
* costophrenic angle: its lowest row over the lateral half of its width against the field's
  bottom.

A landmark closer than ``cut_off_margin`` to the field's edge is cut off.  The value is the
smallest margin of all six landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import CheckResult, CheckStatus, LungBox, cannot_tell
from .config import AcquisitionConfig

CHECK = "anatomy_cut_off"
UNIT = "fraction of image side"
LANDMARKS = ("apex", "lateral edge", "costophrenic angle")


@dataclass(frozen=True)
class FieldBox:
    """The exposed field's extent on the grid, inclusive pixel indices."""

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def of(cls, exposed: np.ndarray) -> FieldBox:
        rows, cols = np.nonzero(exposed.any(axis=1))[0], np.nonzero(exposed.any(axis=0))[0]
        if rows.size == 0:  # nothing exposed: the whole plate stands in
            return cls(0, exposed.shape[0] - 1, 0, exposed.shape[1] - 1)
        return cls(int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))


def landmark_margins(lung: LungBox, field: FieldBox, shape: tuple[int, int]) -> dict[str, float]:
    """Margin of each landmark of ``lung`` to the field's edge, as a fraction of the grid side."""
    height, width = shape
    lateral_half = lung.mask[:, : (lung.left + lung.right) // 2 + 1] if lung.side == "right" else \
        lung.mask[:, (lung.left + lung.right) // 2 :]
    rows = np.nonzero(lateral_half.any(axis=1))[0]
    angle_row = int(rows[-1]) if rows.size else lung.bottom
    lateral = lung.left - field.left if lung.side == "right" else field.right - lung.right
    return {
        "apex": (lung.top - field.top) / height,
        "lateral edge": lateral / width,
        "costophrenic angle": (field.bottom - angle_row) / height,
    }


def check_cut_off(lungs: dict[str, LungBox], field: FieldBox, shape: tuple[int, int],
                  config: AcquisitionConfig = AcquisitionConfig()) -> CheckResult:
    """Fail when any landmark of either lung field lies within ``cut_off_margin`` of the field's edge."""
    threshold = config.cut_off_margin
    rule = f"fail when a landmark is within {threshold} of the edge"
    if len(lungs) < 2:
        return cannot_tell(CHECK, UNIT, threshold, rule, f"found {len(lungs)} lung field(s), 2 needed")
    margins = {f"{side} {name}": round(max(margin, 0.0), 4)
               for side, lung in lungs.items()
               for name, margin in landmark_margins(lung, field, shape).items()}
    cut = [name for name, margin in margins.items() if margin < threshold]
    status = CheckStatus.FAIL if cut else CheckStatus.PASS
    return CheckResult(CHECK, status, min(margins.values()), UNIT, threshold, rule,
                       findings={"cut_off": cut, "margins": margins,
                                 "field": [field.top, field.bottom, field.left, field.right]})
