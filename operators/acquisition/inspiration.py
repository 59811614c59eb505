"""Inspiration: the right lung field's height against the thorax's width.

Height: from the right lung field's apex to the dome of the right hemidiaphragm (the median of
its lowest rows over the middle third of its width; the costophrenic angle lies lower and would
flatter a shallow breath).  Width: between the lateral edges of both lung fields at their widest.
Both are scaled to the source's proportions (the analysis grid is square).  The right side is
measured because the heart does not reach its dome.
"""

from __future__ import annotations

import numpy as np

from .common import CheckResult, CheckStatus, LungBox, cannot_tell
from .config import AcquisitionConfig

CHECK = "inspiration"
UNIT = "ratio"


def dome_row(lung: LungBox) -> int:
    third = (lung.right - lung.left + 1) / 3
    lowest = [np.nonzero(lung.mask[:, column])[0] for column in
              range(int(lung.left + third), int(lung.right - third) + 1)]
    lowest = [rows[-1] for rows in lowest if rows.size]
    return int(np.median(lowest)) if lowest else lung.bottom


def lung_height_ratio(lungs: dict[str, LungBox], shape: tuple[int, int],
                      source_shape: tuple[int, int]) -> tuple[float, int]:
    """(height / width in source proportions, the dome's grid row)."""
    height, width = shape
    right = lungs["right"]
    dome = dome_row(right)
    both = lungs["right"].mask | lungs["left"].mask
    span = [(np.nonzero(r)[0][-1] - np.nonzero(r)[0][0] + 1) for r in both if r.any()]
    lung_height = (dome - right.top + 1) * source_shape[0] / height
    thorax_width = max(span) * source_shape[1] / width
    return lung_height / thorax_width, dome


def check_inspiration(lungs: dict[str, LungBox], shape: tuple[int, int], source_shape: tuple[int, int],
                      config: AcquisitionConfig = AcquisitionConfig()) -> CheckResult:
    """Fail when the lung height ratio is below ``min_lung_height_ratio``."""
    threshold = config.min_lung_height_ratio
    rule = f"fail below {threshold}"
    if len(lungs) < 2:
        return cannot_tell(CHECK, UNIT, threshold, rule, f"found {len(lungs)} lung field(s), 2 needed")
    ratio, dome = lung_height_ratio(lungs, shape, source_shape)
    status = CheckStatus.FAIL if ratio < threshold else CheckStatus.PASS
    return CheckResult(CHECK, status, ratio, UNIT, threshold, rule,
                       findings={"apex_row": lungs["right"].top, "dome_row": dome})
