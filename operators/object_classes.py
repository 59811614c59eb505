"""Graph node 5b: the class of each counted object, removable or medical device, and the removable score.

DESIGN.md "Beyond the thesis", object classes: a necklace the radiographer should have taken off
and an endotracheal tube that must stay in are both "foreign objects" to the segmentation (one
channel).  A small classifier on each object's crop and mask tells them apart:

- :func:`object_features` describes one object on the analysis grid by its shape (size, extent,
  elongation, thickness, orientation, Hu moments), its brightness against the ring around it, and
  where it lies on the image and relative to the chest region;
- :class:`ObjectClassifier` is a two-layer perceptron over the standardised features with two
  heads, the class (removable / device) and the finer category of ``CATEGORIES``; its weights
  (``object_classes.npz``, a few tens of KB) ship inside the package and are trained by
  ``xiqa.training.object_classes`` on the labelled objects of the real-radiograph corpus;
- :func:`classify_quality` gives every counted object its class and confidence (and the finer
  category where the classifier is confident) and adds Q and the verdict over the removable
  objects, the default verdict; a site that counts devices too sets ``count_devices``.

Only numpy runs at inference (no pickles): a few microseconds per object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from monai.deploy.core import Fragment

from .case import Case, CaseOperator
from .scoring import ObjectFinding, QualityResult, ScoringConfig, object_masks, verdict_for

CLASSIFIER_FILE = "object_classes.npz"


class ObjectClass(str, Enum):
    REMOVABLE = "removable"
    """Should have been taken off before the exposure: jewellery, buttons, bra hooks, coins, hair
    clips, ECG electrodes and their leads, external tubing lying on the patient."""
    DEVICE = "device"
    """A medical device that stays in: tubes, lines, drains, pacemakers and leads, sternal wires,
    surgical clips, orthopaedic hardware, valve rings."""


#: the finer categories the classifier may name, and the class each belongs to (corpus labels)
CATEGORY_CLASS = {
    "ecg_electrode": ObjectClass.REMOVABLE,
    "ecg_lead_wire": ObjectClass.REMOVABLE,
    "jewellery_chain": ObjectClass.REMOVABLE,
    "button_snap": ObjectClass.REMOVABLE,
    "bra_hook_underwire": ObjectClass.REMOVABLE,
    "coin": ObjectClass.REMOVABLE,
    "endotracheal_tube": ObjectClass.DEVICE,
    "nasogastric_tube": ObjectClass.DEVICE,
    "central_line": ObjectClass.DEVICE,
    "chest_drain": ObjectClass.DEVICE,
    "pacemaker_can": ObjectClass.DEVICE,
    "pacing_lead": ObjectClass.DEVICE,
    "sternal_wire": ObjectClass.DEVICE,
    "surgical_clip": ObjectClass.DEVICE,
    "orthopaedic_hardware": ObjectClass.DEVICE,
}

FEATURE_NAMES = (
    "log_area", "bbox_height", "bbox_width", "fill", "log_elongation", "vertical", "thickness",
    "compactness", "log_fragments", "centroid_y", "centroid_x", "off_midline", "top", "bottom",
    "inside_fraction", "region_y", "region_off_midline", "region_found",
    "mean_level", "ring_level", "contrast", "peak", "spread", "relative_contrast",
    "hu1", "hu2", "hu3", "hu4", "hu5", "hu6", "hu7",
    "straightness", "lowest_off_midline", "highest_off_midline", "nearest_midline",
)


def object_features(image: np.ndarray, mask: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The feature vector (``FEATURE_NAMES``) of the object ``mask`` on ``image`` (same 2-D grid).

    ``image`` is the display image in [0, 1] (bright = dense), ``mask`` the object's pixels,
    ``region`` the chest region (boolean) or None; coordinates are fractions of the grid.

    Raises
    ------
    ValueError
        ``mask`` is empty or has another shape than ``image``.
    """
    if mask.shape != image.shape:
        raise ValueError(f'Argument "mask" must have the image\'s shape {image.shape}, got {mask.shape}')
    mask = mask.astype(bool)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError('Argument "mask" must contain at least one pixel')
    height, width = image.shape
    area = ys.size
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box_h, box_w = (y1 - y0) / height, (x1 - x0) / width
    fill = area / ((y1 - y0) * (x1 - x0))
    if area > 1:
        covariance = np.cov(np.stack([ys, xs]).astype(np.float64)) + np.eye(2) / 12
    else:
        covariance = np.eye(2) / 12
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    elongation = math.sqrt(max(eigenvalues[1], 1e-6) / max(eigenvalues[0], 1e-6))
    vertical = abs(float(eigenvectors[0, 1]))  # row component of the main axis
    # shape and brightness on the object's box grown by the ring's width (the full grid is slower)
    top, left = max(y0 - 4, 0), max(x0 - 4, 0)
    window = (slice(top, y1 + 4), slice(left, x1 + 4))
    mask_u8 = mask[window].astype(np.uint8)
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = max(sum(cv2.arcLength(c, True) for c in contours), 1.0)
    thickness = 2 * area / perimeter
    compactness = min(4 * math.pi * area / perimeter**2, 1.0)
    fragments, _ = cv2.connectedComponents(mask_u8, connectivity=8)
    cy, cx = (ys.mean() + 0.5) / height, (xs.mean() + 0.5) / width
    if region is not None and region.any():
        inside = float(region[mask].mean())
        rys, rxs = np.nonzero(region)
        ry0, ry1, rx0, rx1 = rys.min(), rys.max() + 1, rxs.min(), rxs.max() + 1
        region_y = ((ys.mean() + 0.5) - ry0) / (ry1 - ry0)
        region_mid = (rx0 + rx1) / 2
        region_off = abs((xs.mean() + 0.5) - region_mid) / ((rx1 - rx0) / 2)
        found = 1.0
    else:
        inside, region_y, region_off, found = 1.0, cy, abs(cx - 0.5) * 2, 0.0
    local = mask_u8.astype(bool)
    ring = cv2.dilate(mask_u8, np.ones((7, 7), np.uint8)).astype(bool) & ~local
    values = image[window][local]
    ring_values = image[window][ring] if ring.any() else values
    ring_level = float(ring_values.mean())
    contrast = float(values.mean()) - ring_level
    hu = cv2.HuMoments(cv2.moments(mask_u8, binaryImage=True)).ravel()
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    hu = np.clip(hu, -30, 30) / 10
    # a line's course: how straight it runs (the box diagonal over half its outline), and where its
    # lowest and highest points and its point nearest the midline lie (a central line's tip runs
    # to the mediastinum, an ECG lead loops over the chest wall)
    straightness = min(math.hypot(y1 - y0, x1 - x0) / max(perimeter / 2, 1.0), 1.5)
    lowest, highest = np.argmax(ys), np.argmin(ys)
    return np.array([
        math.log(area / (height * width)), box_h, box_w, fill, math.log(elongation), vertical, thickness,
        compactness, math.log(fragments - 1), cy, cx, abs(cx - 0.5), y0 / height, y1 / height,
        inside, region_y, region_off, found,
        float(values.mean()), ring_level, contrast, float(values.max()), float(values.std()),
        contrast / (float(ring_values.std()) + 0.02),
        *hu,
        straightness, abs((xs[lowest] + 0.5) / width - 0.5), abs((xs[highest] + 0.5) / width - 0.5),
        float(np.min(np.abs((xs + 0.5) / width - 0.5))),
    ], np.float32)


@dataclass(frozen=True)
class Prediction:
    object_class: ObjectClass
    confidence: float  # probability of that class
    category: str  # most probable finer category
    category_confidence: float


@dataclass(frozen=True)
class ObjectClassifier:
    """A two-layer perceptron with a class head and a category head (numpy only)."""

    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    hidden_weight: np.ndarray  # (F, H)
    hidden_bias: np.ndarray  # (H,)
    class_weight: np.ndarray  # (H, 2): removable, device
    class_bias: np.ndarray  # (2,)
    category_weight: np.ndarray  # (H, C)
    category_bias: np.ndarray  # (C,)
    categories: tuple[str, ...]
    version: str = "untrained"

    def __post_init__(self) -> None:
        unknown = [c for c in self.categories if c not in CATEGORY_CLASS]
        if unknown:
            raise ValueError(f'Argument "categories" has unknown categories {unknown}')
        if self.mean.shape != (len(FEATURE_NAMES),) or self.hidden_weight.shape[0] != len(FEATURE_NAMES):
            raise ValueError(f"the classifier expects {self.mean.shape[0]} features, "
                             f"xiqa computes {len(FEATURE_NAMES)}")

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities (N, 2), category probabilities (N, C)) of feature rows (N, F)."""
        hidden = np.maximum((np.atleast_2d(features) - self.mean) / self.scale @ self.hidden_weight
                            + self.hidden_bias, 0)
        return (_softmax(hidden @ self.class_weight + self.class_bias),
                _softmax(hidden @ self.category_weight + self.category_bias))

    def predict(self, features: np.ndarray) -> list[Prediction]:
        classes, categories = self.probabilities(features)
        predictions = []
        for class_row, category_row in zip(classes, categories, strict=True):
            device = class_row[1] > class_row[0]
            best = int(np.argmax(category_row))
            predictions.append(Prediction(
                ObjectClass.DEVICE if device else ObjectClass.REMOVABLE, float(class_row.max()),
                self.categories[best], float(category_row[best])))
        return predictions

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, mean=self.mean, scale=self.scale, hidden_weight=self.hidden_weight,
                            hidden_bias=self.hidden_bias, class_weight=self.class_weight,
                            class_bias=self.class_bias, category_weight=self.category_weight,
                            category_bias=self.category_bias, categories=np.array(self.categories),
                            features=np.array(FEATURE_NAMES), version=np.array(self.version))
        return Path(path)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load_classifier(path: Path | None = None) -> ObjectClassifier:
    """The classifier at ``path``, by default the one shipped in the package.

    Raises
    ------
    ValueError
        The file was made for other features than xiqa computes.
    """
    if path is None:
        with resources.as_file(resources.files("xiqa.operators") / CLASSIFIER_FILE) as shipped:
            return load_classifier(shipped)
    with np.load(path, allow_pickle=False) as stored:
        if tuple(str(n) for n in stored["features"]) != FEATURE_NAMES:
            raise ValueError(f"{Path(path).name}: made for other object features than xiqa computes")
        arrays = {key: stored[key].astype(np.float32) for key in (
            "mean", "scale", "hidden_weight", "hidden_bias", "class_weight", "class_bias",
            "category_weight", "category_bias")}
        return ObjectClassifier(**arrays, categories=tuple(str(c) for c in stored["categories"]),
                                version=str(stored["version"]))


ECG_CATEGORIES = frozenset({"ecg_electrode", "ecg_lead_wire"})
#: devices that mark a bedside (ICU) plate when the view is not tagged
BEDSIDE_CATEGORIES = frozenset({"endotracheal_tube", "nasogastric_tube", "central_line", "chest_drain"})


class EcgRule(str, Enum):
    """Whether ECG electrodes and leads over the chest count as removable."""

    BY_VIEW = "by_view"
    """Expected on an AP (bedside, ICU) plate, removable on a PA (outpatient) plate; with no View
    Position, expected when a tube, line or drain is seen too, otherwise removable."""
    REMOVABLE = "removable"
    EXPECTED = "expected"


@dataclass(frozen=True)
class ClassConfig:
    #: count medical devices in the default score and verdict too (the thesis counts every object)
    count_devices: bool = False
    #: the finer category is named only at or above this probability (held out by source, the names
    #: given at 0.9 were right for 88 % of Hannover's objects and 67 % of NIH's; at 0.6, 78 % / 62 %)
    category_confidence: float = 0.9
    #: ECG electrodes and leads are named from this probability: the ECG rule needs them, and
    #: (held out by source) a lower bar keeps more leads on bedside plates out of the verdict
    ecg_confidence: float = 0.5
    ecg_rule: EcgRule = EcgRule.BY_VIEW

    def __post_init__(self) -> None:
        for name in ("category_confidence", "ecg_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'Argument "{name}" must be in [0, 1], got {getattr(self, name)}')
        try:
            object.__setattr__(self, "ecg_rule", EcgRule(self.ecg_rule))
        except ValueError:
            raise ValueError(f'Argument "ecg_rule" must be one of {[r.value for r in EcgRule]}, '
                             f"got {self.ecg_rule!r}") from None


def ecg_expected(rule: EcgRule, view_position: str, objects: tuple[ObjectFinding, ...]) -> tuple[bool, str]:
    """(ECG electrodes and leads are expected, the rule that decided it in words).

    ``view_position`` is the View Position tag (upper case, "" when absent)."""
    if rule is EcgRule.EXPECTED:
        return True, "ECG leads expected: the site's setting"
    if rule is EcgRule.REMOVABLE:
        return False, "ECG leads removable: the site's setting"
    if view_position == "AP":
        return True, "ECG leads expected: View Position AP (bedside plate)"
    if view_position:
        return False, f"ECG leads removable: View Position {view_position}"
    if any(f.category in BEDSIDE_CATEGORIES for f in objects):
        return True, "ECG leads expected: no View Position, and a tube, line or drain is seen (bedside plate)"
    return False, "ECG leads removable: no View Position, and no tube, line or drain is seen"


def classify_quality(quality: QualityResult, image: np.ndarray, region: np.ndarray | None,
                     classifier: ObjectClassifier, config: ClassConfig = ClassConfig(),
                     scoring: ScoringConfig = ScoringConfig(), view_position: str = "") -> QualityResult:
    """``quality`` with a class on every object and Q and the verdict over the removable objects.

    The objects are those of ``quality.counted_mask`` (the same fragment merging as scoring, so
    the same objects in the same order).  ``image`` is the analysis-grid display image,
    ``view_position`` the View Position tag for the ECG rule (:func:`ecg_expected`): ECG
    electrodes and leads that the rule expects stay removable but do not lower Q_removable.

    Raises
    ------
    ValueError
        ``image`` is not on ``quality``'s grid.
    """
    if tuple(image.shape) != tuple(quality.grid_shape):
        raise ValueError(f'Argument "image" must be on the grid {quality.grid_shape}, got {image.shape}')
    masks = object_masks(quality)
    if len(masks) != len(quality.objects):
        raise ValueError(f"the counted mask holds {len(masks)} objects, the result {len(quality.objects)}")
    objects = tuple(_with_class(finding, mask, image, region, classifier, config)
                    for finding, mask in zip(quality.objects, masks, strict=True))
    expected, rule = ecg_expected(config.ecg_rule, view_position, objects)
    if expected:
        objects = tuple(replace(f, expected=True) if f.category in ECG_CATEGORIES else f for f in objects)
    removable = [f for f in objects if f.object_class == ObjectClass.REMOVABLE.value and not f.expected]
    q_removable = float(np.prod([1.0 - f.severity for f in removable])) if removable else 1.0
    return replace(quality, objects=objects, q_removable=q_removable,
                   verdict_removable=verdict_for(q_removable, scoring), count_devices=config.count_devices,
                   classifier_version=classifier.version,
                   ecg_rule=rule if any(f.category in ECG_CATEGORIES for f in objects) else None)


def _with_class(finding: ObjectFinding, mask: np.ndarray, image: np.ndarray, region: np.ndarray | None,
                classifier: ObjectClassifier, config: ClassConfig) -> ObjectFinding:
    prediction = classifier.predict(object_features(image, mask, region))[0]
    # a category is named only when it is sure (ECG leads from a lower bar) and agrees with the class
    bar = config.ecg_confidence if prediction.category in ECG_CATEGORIES else config.category_confidence
    named = (prediction.category_confidence >= bar
             and CATEGORY_CLASS[prediction.category] == prediction.object_class)
    return replace(finding, object_class=prediction.object_class.value,
                   class_confidence=round(prediction.confidence, 4),
                   category=prediction.category if named else None,
                   category_confidence=round(prediction.category_confidence, 4) if named else None)


class ObjectClassOperator(CaseOperator):
    """Sets the class of each object of ``case.quality`` and the removable score."""

    stage = "object_classes"
    chest_only = True

    def __init__(self, fragment: Fragment, *args, classifier: ObjectClassifier,
                 config: ClassConfig = ClassConfig(), scoring: ScoringConfig = ScoringConfig(),
                 **kwargs) -> None:
        self.classifier, self.config, self.scoring = classifier, config, scoring
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        region = case.gate.region.mask if case.gate is not None else None
        view = case.gate.tags.get("ViewPosition", "") if case.gate is not None else ""
        case.quality = classify_quality(case.quality, case.network_input[0], region, self.classifier,
                                        self.config, self.scoring, view)
