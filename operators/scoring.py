"""Graph node 5: turn the object mask and the saliency map into Q_img, Q_filtered and a verdict.

Per object (8-connected component of the mask on the H x W analysis grid)::

    RelS  = area / (H W)
    Pen_S = 1 / (1 + exp(-k (RelS - tau)))
    ImpL  = 1                          centroid inside [0.15, 0.85] of height and width
          = 1 - min(d / d_max, 1)      otherwise; d to the image centre, d_max half the diagonal
    S_i   = clip(w_loc ImpL + w_size Pen_S, 0, 1)
    Q     = prod_i (1 - S_i)           1.0 when there is no object

Q_filtered keeps only objects whose mean saliency exceeds the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum

import cv2
import numpy as np
from monai.deploy.core import Fragment

from .case import Case, CaseOperator


class Verdict(str, Enum):
    GOOD = "Good"
    ACCEPTABLE = "Acceptable"
    POOR = "Poor"


@dataclass(frozen=True)
class ScoringConfig:
    size_steepness: float = 70.0  # k
    size_threshold: float = 0.1  # tau, as a fraction of the image
    central_margin: float = 0.15  # the central region is [margin, 1 - margin] of each axis
    location_weight: float = 0.3
    size_weight: float = 0.7
    saliency_threshold: float = 0.30
    good_above: float = 0.8
    acceptable_above: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.central_margin < 0.5:
            raise ValueError(f'Argument "central_margin" must be in [0, 0.5), got {self.central_margin}')
        if not self.acceptable_above <= self.good_above:
            raise ValueError('Argument "acceptable_above" must not exceed "good_above", got '
                             f'{self.acceptable_above} > {self.good_above}')


@dataclass(frozen=True)
class ObjectFinding:
    """One detected object; coordinates are fractions of the image (0 = top/left)."""

    area_pixels: int
    area_fraction: float
    centroid_y: float
    centroid_x: float
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive) on the analysis grid
    location_weight: float
    size_penalty: float
    severity: float
    mean_saliency: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QualityResult:
    q_img: float
    q_filtered: float
    verdict: Verdict
    verdict_filtered: Verdict
    objects: tuple[ObjectFinding, ...] = field(default_factory=tuple)
    grid_shape: tuple[int, int] = (256, 256)

    def to_dict(self) -> dict:
        return {
            "q_img": self.q_img,
            "q_filtered": self.q_filtered,
            "verdict": self.verdict.value,
            "verdict_filtered": self.verdict_filtered.value,
            "grid_shape": list(self.grid_shape),
            "objects": [finding.to_dict() for finding in self.objects],
        }


def size_penalty(area_fraction: float, config: ScoringConfig = ScoringConfig()) -> float:
    """Pen_S: a logistic step around ``tau`` of steepness ``k``."""
    return 1.0 / (1.0 + math.exp(-config.size_steepness * (area_fraction - config.size_threshold)))


def location_weight(centroid_y: float, centroid_x: float, height: int, width: int,
                    config: ScoringConfig = ScoringConfig()) -> float:
    """ImpL for a centroid in pixel coordinates of an ``height`` x ``width`` grid."""
    margin = config.central_margin
    if margin * height <= centroid_y <= (1 - margin) * height and \
            margin * width <= centroid_x <= (1 - margin) * width:
        return 1.0
    distance = math.hypot(centroid_y - height / 2, centroid_x - width / 2)
    half_diagonal = math.hypot(height, width) / 2
    return 1.0 - min(distance / half_diagonal, 1.0)


def verdict_for(quality: float, config: ScoringConfig = ScoringConfig()) -> Verdict:
    if quality > config.good_above:
        return Verdict.GOOD
    if quality > config.acceptable_above:
        return Verdict.ACCEPTABLE
    return Verdict.POOR


def find_objects(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of ``mask`` (no minimum area)."""
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    return [labels == label for label in range(1, count)]


def score_mask(mask: np.ndarray, saliency: np.ndarray | None = None,
               config: ScoringConfig = ScoringConfig()) -> QualityResult:
    """Score a binary mask; ``saliency`` (same shape, values in [0, 1]) enables Q_filtered.

    Without saliency, Q_filtered equals Q_img (no object can be filtered out).

    Raises
    ------
    ValueError
        ``mask`` is not 2-D, or ``saliency`` has another shape.
    """
    if mask.ndim != 2:
        raise ValueError(f'Argument "mask" must be 2-D, got shape {mask.shape}')
    if saliency is not None and saliency.shape != mask.shape:
        raise ValueError(f'Argument "saliency" must have the mask\'s shape {mask.shape}, '
                         f"got {saliency.shape}")
    height, width = mask.shape
    findings = []
    for component in find_objects(mask):
        ys, xs = np.nonzero(component)
        area = int(ys.size)
        # pixel centres: a one-pixel object at row r has its centroid at r + 0.5
        cy, cx = float(ys.mean()) + 0.5, float(xs.mean()) + 0.5
        relative_size = area / (height * width)
        penalty = size_penalty(relative_size, config)
        weight = location_weight(cy, cx, height, width, config)
        severity = min(max(config.location_weight * weight + config.size_weight * penalty, 0.0), 1.0)
        mean_saliency = float(saliency[component].mean()) if saliency is not None else None
        findings.append(ObjectFinding(
            area_pixels=area, area_fraction=relative_size,
            centroid_y=cy / height, centroid_x=cx / width,
            bbox=(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1),
            location_weight=weight, size_penalty=penalty, severity=severity,
            mean_saliency=mean_saliency,
        ))
    q_img = float(np.prod([1.0 - f.severity for f in findings])) if findings else 1.0
    kept = [f for f in findings if f.mean_saliency is None or f.mean_saliency > config.saliency_threshold]
    q_filtered = float(np.prod([1.0 - f.severity for f in kept])) if kept else 1.0
    return QualityResult(q_img, q_filtered, verdict_for(q_img, config), verdict_for(q_filtered, config),
                         tuple(findings), (height, width))


class ScoringOperator(CaseOperator):
    """Sets ``case.quality`` from the mask and, when present, the combined saliency map."""

    stage = "scoring"

    def __init__(self, fragment: Fragment, *args, config: ScoringConfig = ScoringConfig(), **kwargs) -> None:
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        saliency = case.saliency.combined if case.saliency is not None else None
        case.quality = score_mask(case.segmentation.mask, saliency, self.config)
