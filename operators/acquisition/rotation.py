"""Rotation: the mediastinum off the thorax's midline.

Over the upper half of the lung fields (above the heart, where the medial lung edges run along the
trachea and the spine), each row where both lung fields are present gives the mediastinum's centre
(halfway between the medial lung edges) and the thorax's centre (halfway between the lateral
edges).  The median offset between them, as a fraction of the thorax's half width, is the value:
positive when the mediastinum lies towards the patient's left (the image's right).  The ratio of
the narrower to the wider lung field over the same rows is reported with it.
"""

from __future__ import annotations

import numpy as np

from .common import CheckResult, CheckStatus, LungBox, cannot_tell
from .config import AcquisitionConfig

CHECK = "rotation"
UNIT = "fraction of thorax half width"
UPPER_ZONE = (0.15, 0.5)  # share of the lung fields' height, from their common top
MIN_ROWS = 5


def midlines(lungs: dict[str, LungBox]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per measured row: (row, mediastinum centre, thorax centre, half width); None with < MIN_ROWS."""
    right, left = lungs["right"], lungs["left"]  # image left, image right
    top = min(right.top, left.top)
    bottom = max(right.bottom, left.bottom)
    start, stop = (int(top + f * (bottom - top)) for f in UPPER_ZONE)
    rows, mediastinum, thorax, half = [], [], [], []
    for row in range(start, stop + 1):
        a, b = np.nonzero(right.mask[row])[0], np.nonzero(left.mask[row])[0]
        if a.size == 0 or b.size == 0 or a[-1] >= b[0]:
            continue
        rows.append(row)
        mediastinum.append((a[-1] + b[0]) / 2)
        thorax.append((a[0] + b[-1]) / 2)
        half.append((b[-1] - a[0]) / 2)
    if len(rows) < MIN_ROWS:
        return None
    return np.array(rows), np.array(mediastinum), np.array(thorax), np.array(half)


def check_rotation(lungs: dict[str, LungBox], config: AcquisitionConfig = AcquisitionConfig()) -> CheckResult:
    """Fail when the mediastinum is more than ``max_mediastinum_offset`` of the half width off centre."""
    threshold = config.max_mediastinum_offset
    rule = f"fail when the offset exceeds {threshold} either way"
    if len(lungs) < 2:
        return cannot_tell(CHECK, UNIT, threshold, rule, f"found {len(lungs)} lung field(s), 2 needed")
    lines = midlines(lungs)
    if lines is None:
        return cannot_tell(CHECK, UNIT, threshold, rule, "the lung fields share too few rows above the heart")
    rows, mediastinum, thorax, half = lines
    offset = float(np.median((mediastinum - thorax) / np.maximum(half, 1)))
    widths = [float(np.median([np.count_nonzero(lungs[side].mask[row]) for row in rows])) for side in lungs]
    status = CheckStatus.FAIL if abs(offset) > threshold else CheckStatus.PASS
    towards = "left" if offset > 0 else "right"
    return CheckResult(CHECK, status, offset, UNIT, threshold, rule, findings={
        "towards": towards, "lung_width_ratio": round(min(widths) / max(max(widths), 1.0), 4),
        "mediastinum_x": round(float(np.median(mediastinum)), 2),
        "thorax_x": round(float(np.median(thorax)), 2),
        "rows": [int(rows[0]), int(rows[-1])]})
