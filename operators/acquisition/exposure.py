"""Exposure: the IEC 62494-1 indices where the modality sends them, and clipped lung from the pixels.

* Exposure Index (0018,1411), Target Exposure Index (0018,1412), Deviation Index (0018,1413).
  The Deviation Index is read, or computed as 10 log10(EI / EI_T) when only the other two are
  there (IEC 62494-1 6.3); it fails outside ``deviation_index_band``.
* Clipped lung: the share of the lung fields at the lowest or highest displayed value (within
  ``clip_level``), where an over- or under-exposed, or badly windowed, plate shows nothing; it
  fails above ``max_clipped_lung``.

The value is the Deviation Index where known (unit "DI"), otherwise the clipped share.
"""

from __future__ import annotations

import math

import numpy as np

from .common import CheckResult, CheckStatus, LungBox, cannot_tell
from .config import AcquisitionConfig

CHECK = "exposure"
INDEX_KEYWORDS = ("ExposureIndex", "TargetExposureIndex", "DeviationIndex")


def _number(dataset, keyword: str) -> float | None:
    """A finite float, or None when absent or unreadable (tolerant decode)."""
    try:
        value = dataset.get(keyword) if dataset is not None else None
        value = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def exposure_indices(dataset) -> dict[str, float | None]:
    """EI, EI_T and DI of ``dataset`` (DI computed from EI and EI_T where it is not sent)."""
    indices = {keyword: _number(dataset, keyword) for keyword in INDEX_KEYWORDS}
    ei, target = indices["ExposureIndex"], indices["TargetExposureIndex"]
    indices["deviation_index_computed"] = False
    if indices["DeviationIndex"] is None and ei and target and ei > 0 and target > 0:
        indices["DeviationIndex"] = 10 * math.log10(ei / target)
        indices["deviation_index_computed"] = True
    return indices


def clipped_fraction(image: np.ndarray, lungs: dict[str, LungBox], level: float) -> float:
    both = np.zeros(image.shape, bool)
    for lung in lungs.values():
        both |= lung.mask
    values = image[both]
    return float(np.mean((values <= level) | (values >= 1 - level))) if values.size else 0.0


def check_exposure(image: np.ndarray, lungs: dict[str, LungBox], dataset,
                   config: AcquisitionConfig = AcquisitionConfig()) -> CheckResult:
    """Fail when the Deviation Index is outside its band or too much of the lungs is clipped."""
    low, high = config.deviation_index_band
    indices = exposure_indices(dataset)
    deviation = indices["DeviationIndex"]
    clipped = clipped_fraction(image, lungs, config.clip_level) if lungs else None
    findings = {"exposure_index": indices["ExposureIndex"],
                "target_exposure_index": indices["TargetExposureIndex"],
                "deviation_index": None if deviation is None else round(deviation, 3),
                "deviation_index_computed": indices["deviation_index_computed"],
                "clipped_lung_fraction": None if clipped is None else round(clipped, 4),
                "max_clipped_lung": config.max_clipped_lung}
    if deviation is None and clipped is None:
        result = cannot_tell(CHECK, "fraction of lung area", config.max_clipped_lung,
                             f"fail above {config.max_clipped_lung}",
                             "no exposure indices in the tags and no lung field found")
        return CheckResult(**{**result.__dict__, "findings": findings})
    problems = []
    if deviation is not None and not low <= deviation <= high:
        problems.append("deviation index")
    if clipped is not None and clipped > config.max_clipped_lung:
        problems.append("clipped lung")
    findings["problems"] = problems
    status = CheckStatus.FAIL if problems else CheckStatus.PASS
    if deviation is not None:
        return CheckResult(CHECK, status, deviation, "DI", (low, high),
                           f"fail outside [{low}, {high}] or above {config.max_clipped_lung} clipped lung",
                           findings)
    return CheckResult(CHECK, status, clipped, "fraction of lung area", config.max_clipped_lung,
                       f"fail above {config.max_clipped_lung}", findings)
