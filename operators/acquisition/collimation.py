"""Collimation too wide: the exposed field reaching far beyond the thorax.

The value is the exposed field's box area over the area of the box around both lung fields
(both on the analysis grid, so the source's proportions cancel out).
"""

from __future__ import annotations

from .common import CheckResult, CheckStatus, LungBox, cannot_tell
from .config import AcquisitionConfig
from .cut_off import FieldBox

CHECK = "collimation"
UNIT = "ratio"


def check_collimation(lungs: dict[str, LungBox], field: FieldBox,
                      config: AcquisitionConfig = AcquisitionConfig()) -> CheckResult:
    """Fail when the field is more than ``max_field_ratio`` times the lung fields' box."""
    threshold, rule = config.max_field_ratio, f"fail above {config.max_field_ratio}"
    if len(lungs) < 2:
        return cannot_tell(CHECK, UNIT, threshold, rule, f"found {len(lungs)} lung field(s), 2 needed")
    top = min(lung.top for lung in lungs.values())
    bottom = max(lung.bottom for lung in lungs.values())
    left = min(lung.left for lung in lungs.values())
    right = max(lung.right for lung in lungs.values())
    thorax = (bottom - top + 1) * (right - left + 1)
    exposed = (field.bottom - field.top + 1) * (field.right - field.left + 1)
    ratio = exposed / max(thorax, 1)
    status = CheckStatus.FAIL if ratio > threshold else CheckStatus.PASS
    return CheckResult(CHECK, status, ratio, UNIT, threshold, rule,
                       findings={"lung_box": [top, bottom, left, right]})
