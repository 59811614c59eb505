"""A bundle's mask parameters chosen as the product counts objects: over the chest, per plate.

The Dice calibration (``trainer.calibrate``) picks the threshold that draws the best pixels and
then the hysteresis seed and sure area that cost the fewest objects over the whole image, a
missed one weighing 2.3 false ones.  A radiographer sees neither: she sees whether a plate gets an
object counted over its chest.  Trained longer, the network finds far more real devices, and the
Dice calibration then lands on a point that also counts objects on most clean plates (NIH held
out, fourth recipe: 86 % of device plates counted, 48 % of clean plates Good).

Here every (threshold, seed, sure area) is judged the way scoring judges a plate: objects are the
mask's merged components mostly inside the chest region the gate finds (or estimates) on the
same image, a labelled object is found when a counted object touches it, and a counted object
that touches no label is false.  The point kept finds the most labelled objects while the
validation images get at most ``max_false_per_image`` false objects; of equal sensitivity the one
with fewer false objects wins.  Only validation images of the training sources take part, and
false objects are counted only on images whose labels are complete (composites, whose
backgrounds are clean plates, and clean plates): a real device plate's labels miss faint leads,
and counting those as false drove the first try to its strictest point (NIH fold: 0.44 "false"
objects per image even there).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from xiqa.operators.segmentation import Components, kept_components, threshold_components

from .trainer import CALIBRATION_THRESHOLDS, SEED_THRESHOLDS, SURE_AREAS


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    seed_threshold: float | None
    sure_area: int | None
    object_sensitivity: float
    false_objects_per_image: float


def chest_regions(images: np.ndarray) -> np.ndarray:
    """The gate's chest region (found, or estimated) of each (N, H, W) display-domain image, as the
    app gets it for a plate whose tags say chest PA."""
    from pydicom.dataset import Dataset
    from xiqa.operators.gate import judge_frontal_chest

    tags = Dataset()
    tags.BodyPartExamined, tags.ViewPosition = "CHEST", "PA"
    return np.stack([judge_frontal_chest(tags, image).region.mask.astype(bool) for image in images])


def counted_objects(mask: np.ndarray, region: np.ndarray) -> list[np.ndarray]:
    """The objects scoring counts on ``mask``: merged components mostly inside ``region``."""
    from xiqa.operators.scoring import ScoringConfig, find_objects

    config = ScoringConfig()
    return [
        component
        for component, _ in find_objects(mask, config.merge_radius)
        if region[component].mean() >= config.min_inside_fraction
    ]


def _kept(components: Components, seed: float | None, area: int | None) -> np.ndarray:
    """The hysteresis mask (``segmentation.hysteresis_mask``) of components found once per threshold."""
    if seed is None:
        return components.labels > 0
    return kept_components(components, seed, area)[components.labels]


def choose_operating_point(
    probabilities: np.ndarray,
    labels: np.ndarray,
    regions: np.ndarray,
    max_false_per_image: float,
    labels_complete: np.ndarray | None = None,
    thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS,
    seeds: tuple[float, ...] = SEED_THRESHOLDS,
    areas: tuple[int, ...] = SURE_AREAS,
) -> tuple[OperatingPoint, list[OperatingPoint]]:
    """The kept point and every point tried, over (N, [1,] H, W) ``probabilities``, boolean
    ``labels`` and chest ``regions``; false objects per image are counted on the images whose
    ``labels_complete`` (N booleans; all when None).  Where no point keeps false objects within
    the limit, the one with the fewest false objects is kept.

    Raises
    ------
    ValueError
        The three stacks do not have one shape, or there are no images.
    """
    probabilities = np.asarray(probabilities, np.float32).reshape(-1, *np.shape(probabilities)[-2:])
    labels = np.asarray(labels).astype(bool).reshape(probabilities.shape)
    count = len(probabilities)
    complete = np.ones(count, bool) if labels_complete is None else np.asarray(labels_complete, bool)
    if regions.shape != probabilities.shape or not count or complete.shape != (count,):
        raise ValueError(f'Arguments "probabilities", "labels", "regions" and "labels_complete" must be '
                         f"stacks of one shape, got {probabilities.shape}, {np.shape(labels)}, "
                         f"{regions.shape} and {complete.shape}")
    if not complete.any():
        raise ValueError('Argument "labels_complete" must mark at least one image')
    truths = [counted_objects(label, region) for label, region in zip(labels, regions, strict=True)]
    true_objects = sum(len(objects) for objects in truths)
    tried = []
    for threshold in thresholds:
        components = [threshold_components(probability, threshold) for probability in probabilities]
        candidates = [(None, None)] + [(seed, area) for seed, area in product(seeds, (None, *areas))
                                       if seed >= threshold]
        for seed, area in candidates:
            found = false = 0
            for region, truth, parts, judged in zip(regions, truths, components, complete, strict=True):
                counted = counted_objects(_kept(parts, seed, area), region)
                found += sum(any((obj & component).any() for obj in counted) for component in truth)
                if judged:
                    false += sum(not any((obj & component).any() for component in truth) for obj in counted)
            tried.append(OperatingPoint(threshold, seed, area, found / true_objects if true_objects else 0.0,
                                        false / int(complete.sum())))
    within = [point for point in tried if point.false_objects_per_image <= max_false_per_image]
    if within:
        kept = max(within, key=lambda p: (p.object_sensitivity, -p.false_objects_per_image))
    else:
        kept = min(tried, key=lambda p: (p.false_objects_per_image, -p.object_sensitivity))
    return kept, tried
