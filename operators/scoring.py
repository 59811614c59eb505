"""Graph node 5: turn the object mask and the saliency map into Q_img, Q_filtered and a verdict.

Per object (8-connected component of the mask on the H x W analysis grid)::

    RelS  = area / (H W)
    Pen_S = 1 / (1 + exp(-k (RelS - tau)))
    ImpL  = 1                          centroid inside [0.15, 0.85] of height and width
          = 1 - min(d / d_max, 1)      otherwise; d to the image centre, d_max half the diagonal
    S_i   = clip(w_loc ImpL + w_size Pen_S, 0, 1)
    Q     = prod_i (1 - S_i)           1.0 when there is no object

Q_filtered keeps only objects whose mean saliency exceeds the threshold.

Two steps beyond the thesis, both recorded in the result (DESIGN.md "Beyond the thesis"):

- fragment merging: the thesis counts raw 8-connected components, but the mask of one thin lead
  or necklace often breaks into pieces, and each piece would be penalised as an object.  Pieces
  closer than ``2 * merge_radius + 1`` pixels are joined before labelling (labels of the mask
  dilated by ``merge_radius``); an object keeps only its own mask pixels, so merging adds no
  area.  The raw component count is kept.
- patient region: with a chest region (``chest_region``), an object counts only when at least
  ``min_inside_fraction`` of its pixels lie over the chest; the others (markers, text, shutters,
  the image border, a wrist outside the thorax) are listed apart and do not change Q.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import cv2
import numpy as np
from monai.deploy.core import Fragment

from .case import Case, CaseOperator

if TYPE_CHECKING:
    from .acquisition import AcquisitionResult


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
    # analysis-grid pixels (chosen on validation composites); 0 counts raw components as the thesis
    merge_radius: int = 4
    min_inside_fraction: float = 0.2  # of an object's pixels over the chest region for it to count

    def __post_init__(self) -> None:
        if self.merge_radius < 0:
            raise ValueError(f'Argument "merge_radius" must not be negative, got {self.merge_radius}')
        if not 0 <= self.min_inside_fraction <= 1:
            raise ValueError('Argument "min_inside_fraction" must be in [0, 1], got '
                             f'{self.min_inside_fraction}')
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
    inside_fraction: float = 1.0  # of its pixels over the chest region (1 without a region)
    fragments: int = 1  # raw 8-connected components merged into this object
    # set by the object-class node (object_classes.py); None before it ran
    object_class: str | None = None  # "removable" or "device"
    class_confidence: float | None = None  # probability of that class
    category: str | None = None  # the finer category, only where the classifier is confident
    category_confidence: float | None = None
    expected: bool = False  # removable by class, but the ECG rule expects it here (not counted)

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
    objects_outside: tuple[ObjectFinding, ...] = field(default_factory=tuple)  # not over the chest
    raw_component_count: int = 0  # 8-connected components before merging (the thesis' count)
    merge_radius: int = 0
    region_used: bool = False
    # the pixels of the counted objects on the analysis grid (what SEG, SC and report.png show)
    counted_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    # set by the object-class node: Q and its verdict over the removable objects only
    q_removable: float | None = None
    verdict_removable: Verdict | None = None
    count_devices: bool = False  # the site counts medical devices in the default verdict too
    classifier_version: str | None = None
    ecg_rule: str | None = None  # the rule that decided whether ECG leads count, in words

    @property
    def classified(self) -> bool:
        return self.q_removable is not None

    @property
    def removable_objects(self) -> tuple[ObjectFinding, ...]:
        """The objects the default verdict counts: removable (or not classed) and not expected."""
        return tuple(f for f in self.objects if f.object_class in (None, "removable") and not f.expected)

    @property
    def expected_objects(self) -> tuple[ObjectFinding, ...]:
        """Removable by class, but expected on this plate (the ECG rule): listed, not counted."""
        return tuple(f for f in self.objects if f.object_class == "removable" and f.expected)

    @property
    def devices(self) -> tuple[ObjectFinding, ...]:
        return tuple(f for f in self.objects if f.object_class == "device")

    @property
    def default_quality(self) -> float:
        """The figure the default verdict follows: Q over the removable objects, or Q_img where the
        objects were not classed or the site counts devices too."""
        if self.q_removable is None or self.count_devices:
            return self.q_img
        return self.q_removable

    @property
    def default_verdict(self) -> Verdict:
        if self.verdict_removable is None or self.count_devices:
            return self.verdict
        return self.verdict_removable

    @property
    def verdict_basis(self) -> str:
        """What the default verdict counts: "removable objects" or "all objects"."""
        return "all objects" if self.q_removable is None or self.count_devices else "removable objects"

    def to_dict(self) -> dict:
        return {
            "q_img": self.q_img,
            "q_filtered": self.q_filtered,
            # the default verdict (DESIGN "Beyond the thesis", object classes); the thesis' verdict
            # over every object is verdict_all_objects
            "verdict": self.default_verdict.value,
            "verdict_basis": self.verdict_basis,
            "verdict_all_objects": self.verdict.value,
            "q_removable": self.q_removable,
            "verdict_removable": self.verdict_removable.value if self.verdict_removable else None,
            "count_devices": self.count_devices,
            "classifier_version": self.classifier_version,
            "removable_count": len(self.removable_objects),
            "device_count": len(self.devices),
            "expected_count": len(self.expected_objects),
            "ecg_rule": self.ecg_rule,
            "verdict_filtered": self.verdict_filtered.value,
            "grid_shape": list(self.grid_shape),
            "objects": [finding.to_dict() for finding in self.objects],
            "objects_outside_chest": [finding.to_dict() for finding in self.objects_outside],
            "raw_component_count": self.raw_component_count,
            "merge_radius": self.merge_radius,
            "chest_region_used": self.region_used,
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


def overall_verdict(quality: QualityResult, acquisition: AcquisitionResult | None = None) -> Verdict:
    """The default (foreign-object) verdict combined with the acquisition checks, by their verdict
    effect (``AcquisitionResult.overall_verdict``); the default verdict where no checks ran."""
    verdict = quality.default_verdict
    return verdict if acquisition is None else Verdict(acquisition.overall_verdict(verdict.value))


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1, labels


def find_objects(mask: np.ndarray, merge_radius: int = 0) -> list[tuple[np.ndarray, int]]:
    """(boolean mask, fragment count) of each object on ``mask``.

    Objects are the 8-connected components of the mask dilated by ``merge_radius`` pixels, each
    restricted to the mask's own pixels: pieces less than ``2 * merge_radius + 1`` pixels apart
    are one object.  (A closing would not bridge a gap in a one-pixel-wide lead.)
    """
    binary = mask > 0
    if merge_radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * merge_radius + 1,) * 2)
        grown = cv2.dilate(binary.astype(np.uint8), kernel) > 0
    else:
        grown = binary
    count, labels = _components(grown)
    _, raw_labels = _components(binary)
    objects = []
    for label in range(1, count + 1):
        component = (labels == label) & binary
        objects.append((component, len(np.unique(raw_labels[component]))))
    return objects


def score_mask(mask: np.ndarray, saliency: np.ndarray | None = None,
               config: ScoringConfig = ScoringConfig(), region: np.ndarray | None = None) -> QualityResult:
    """Score a binary mask; ``saliency`` (same shape, values in [0, 1]) enables Q_filtered.

    Without saliency, Q_filtered equals Q_img (no object can be filtered out).  With a
    ``region`` (boolean, same shape), objects mostly outside it are listed apart and not counted.

    Raises
    ------
    ValueError
        ``mask`` is not 2-D, or ``saliency`` or ``region`` has another shape.
    """
    if mask.ndim != 2:
        raise ValueError(f'Argument "mask" must be 2-D, got shape {mask.shape}')
    for name, other in (("saliency", saliency), ("region", region)):
        if other is not None and other.shape != mask.shape:
            raise ValueError(f'Argument "{name}" must have the mask\'s shape {mask.shape}, '
                             f"got {other.shape}")
    height, width = mask.shape
    findings, outside = [], []
    counted = np.zeros(mask.shape, bool)
    for component, fragments in find_objects(mask, config.merge_radius):
        ys, xs = np.nonzero(component)
        area = int(ys.size)
        # pixel centres: a one-pixel object at row r has its centroid at r + 0.5
        cy, cx = float(ys.mean()) + 0.5, float(xs.mean()) + 0.5
        relative_size = area / (height * width)
        penalty = size_penalty(relative_size, config)
        weight = location_weight(cy, cx, height, width, config)
        severity = min(max(config.location_weight * weight + config.size_weight * penalty, 0.0), 1.0)
        mean_saliency = float(saliency[component].mean()) if saliency is not None else None
        inside = float(region[component].mean()) if region is not None else 1.0
        finding = ObjectFinding(
            area_pixels=area, area_fraction=relative_size,
            centroid_y=cy / height, centroid_x=cx / width,
            bbox=(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1),
            location_weight=weight, size_penalty=penalty, severity=severity,
            mean_saliency=mean_saliency, inside_fraction=inside, fragments=fragments,
        )
        if inside >= config.min_inside_fraction:
            findings.append(finding)
            counted |= component
        else:
            outside.append(finding)
    q_img = float(np.prod([1.0 - f.severity for f in findings])) if findings else 1.0
    kept = [f for f in findings if f.mean_saliency is None or f.mean_saliency > config.saliency_threshold]
    q_filtered = float(np.prod([1.0 - f.severity for f in kept])) if kept else 1.0
    raw_count, _ = _components(mask > 0)
    return QualityResult(q_img, q_filtered, verdict_for(q_img, config), verdict_for(q_filtered, config),
                         tuple(findings), (height, width), tuple(outside), raw_count, config.merge_radius,
                         region is not None, counted)


def object_masks(quality: QualityResult) -> list[np.ndarray]:
    """The pixels of each counted object on the analysis grid, in the order of ``quality.objects``.

    The counted mask holds only counted objects; merging it again with the same radius gives the
    same objects in the same order (objects apart in the whole mask stay apart in a part of it).
    """
    if quality.counted_mask is None:
        return []
    return [component for component, _ in find_objects(quality.counted_mask, quality.merge_radius)]


def counted_at_source(source_mask: np.ndarray, quality: QualityResult,
                      object_class: str | None = None) -> np.ndarray:
    """``source_mask`` (the network's mask at source resolution) without the objects that scoring
    did not count (outside the chest: markers, text, shutters, the image border); with
    ``object_class`` ("removable" or "device"), only the counted objects of that class.

    The counted grid mask is grown by one grid pixel before it is scaled up, because the source
    mask comes from the interpolated probability and may reach just past the grid pixels.
    """
    if quality.counted_mask is None:  # nothing classed: every object is removable
        return source_mask if object_class in (None, "removable") else np.zeros_like(source_mask)
    counted = quality.counted_mask
    if object_class is not None:
        counted = np.zeros(counted.shape, bool)
        for finding, pixels in zip(quality.objects, object_masks(quality), strict=True):
            if (finding.object_class or "removable") == object_class:
                counted |= pixels
    grown = cv2.dilate(counted.astype(np.uint8), np.ones((3, 3), np.uint8))
    rows, columns = source_mask.shape
    keep = cv2.resize(grown, (columns, rows), interpolation=cv2.INTER_NEAREST) > 0
    return (source_mask.astype(bool) & keep).astype(source_mask.dtype)


class ScoringOperator(CaseOperator):
    """Sets ``case.quality`` from the mask, the gate's chest region and, when present, the combined
    saliency map."""

    stage = "scoring"
    chest_only = True

    def __init__(self, fragment: Fragment, *args, config: ScoringConfig = ScoringConfig(), **kwargs) -> None:
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        saliency = case.saliency.combined if case.saliency is not None else None
        region = case.gate.region.mask if case.gate is not None else None
        case.quality = score_mask(case.segmentation.mask, saliency, self.config, region)
