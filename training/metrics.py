"""Segmentation metrics on binary masks (distances in pixels of the grid they are given on).

Definitions (DESIGN.md, "Evaluation metrics"; thesis eqs. 4.3-4.7):

- Dice ``2|X∩Y| / (|X|+|Y|)`` and recall ``|X∩Y| / |Y|`` (X prediction, Y truth).
- Boundary IoU (Cheng et al. 2021, the thesis' reference [40]): IoU of the two
  *boundary bands*, the pixels of each mask within ``d`` pixels of its contour,
  ``d = max(1, round(dilation_ratio * image diagonal))``; ``dilation_ratio``
  0.02 (the paper's default) gives d = 7 on 256 x 256.  ``dilation_ratio=0``
  gives one-pixel (8-connected erosion) contours, the thesis' equation 4.5.
- Surface points: mask pixels with a 4-neighbour outside the mask (or on the
  image edge).  ``d(p, S)`` is the Euclidean distance to the nearest surface
  point of the other mask.
- ASSD: mean of all ``d`` from both surfaces (equation 4.6).
- HD95: 95th percentile of the pooled distances of both directions, as the
  thesis states it ("the 95th percentile of all point-to-surface
  distances").  MONAI's ``compute_hausdorff_distance`` instead takes the
  larger of the two directed percentiles, which is never smaller.

Conventions for empty masks (``EMPTY_CONVENTIONS``; tested):

===============================  ======  =======  ======  ======  ======
case                              Dice   recall    BIoU    ASSD    HD95
===============================  ======  =======  ======  ======  ======
both empty (correct negative)      1.0     NaN      1.0     NaN     NaN
truth empty, prediction not        0.0     NaN      0.0     NaN     NaN
prediction empty, truth not        0.0     0.0      0.0     NaN     NaN
===============================  ======  =======  ======  ======  ======

NaN means *undefined* and is left out of means (``summarise`` reports for how
many images each mean was taken): recall has nothing to recall on an image
without objects, and a surface distance needs two non-empty surfaces (a 0
for correct negatives would pull the mean towards 0 on data sets where most
images hold no object).  A missed or hallucinated object therefore counts in
Dice, recall and BIoU only, and ASSD/HD95 describe how well the objects that
*were* found are outlined.  ``pooled_dice_recall`` sums pixels over all
images instead.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

EMPTY_CONVENTIONS = {
    "both_empty": {"dice": 1.0, "recall": math.nan, "boundary_iou": 1.0, "assd": math.nan,
                   "hd95": math.nan},
    "truth_empty": {"dice": 0.0, "recall": math.nan, "boundary_iou": 0.0, "assd": math.nan,
                    "hd95": math.nan},
    "prediction_empty": {"dice": 0.0, "recall": 0.0, "boundary_iou": 0.0, "assd": math.nan,
                         "hd95": math.nan},
}
METRIC_NAMES = ("dice", "recall", "boundary_iou", "assd", "hd95")
HIGHER_IS_BETTER = {"dice": True, "recall": True, "boundary_iou": True, "assd": False,
                    "hd95": False}


def _as_masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction).astype(bool), np.asarray(truth).astype(bool)
    prediction, truth = np.squeeze(prediction), np.squeeze(truth)
    if prediction.shape != truth.shape or prediction.ndim != 2:
        raise ValueError(f'Arguments "prediction" and "truth" must be 2-D masks of one shape, got '
                         f"{prediction.shape} and {truth.shape}")
    return prediction, truth


def pooled_dice_recall(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and recall with true/false positives summed over all pixels of all images.

    Both empty gives Dice 1; an empty truth gives recall 1 (nothing to find).
    """
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    true_positive = float(np.logical_and(prediction, truth).sum())
    predicted, actual = float(prediction.sum()), float(truth.sum())
    dice = 1.0 if predicted + actual == 0 else 2 * true_positive / (predicted + actual)
    recall = 1.0 if actual == 0 else true_positive / actual
    return {"dice": dice, "recall": recall}


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = _as_masks(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def recall_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = _as_masks(prediction, truth)
    actual = int(truth.sum())
    return math.nan if actual == 0 else int(np.logical_and(prediction, truth).sum()) / actual


def surface(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image border counts as outside."""
    mask = np.asarray(mask, bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1),
                                    border_value=0)
    return mask & ~eroded


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels (chessboard) of its outside."""
    mask = np.asarray(mask, bool)
    width = max(1, int(width))
    # Pad with background so that objects touching the border get a band there too.
    padded = np.pad(mask, width, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=np.ones((3, 3), bool), iterations=width)
    return mask & ~eroded[width:-width, width:-width]


def boundary_iou(prediction: np.ndarray, truth: np.ndarray, dilation_ratio: float = 0.02) -> float:
    prediction, truth = _as_masks(prediction, truth)
    if not prediction.any() and not truth.any():
        return 1.0
    if not prediction.any() or not truth.any():
        return 0.0
    width = max(1, int(round(dilation_ratio * math.hypot(*prediction.shape))))
    band_p, band_t = boundary_band(prediction, width), boundary_band(truth, width)
    union = int((band_p | band_t).sum())
    return int((band_p & band_t).sum()) / union if union else 1.0


def surface_distances(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances of each prediction surface point to the truth surface, and the reverse."""
    prediction, truth = _as_masks(prediction, truth)
    surface_p, surface_t = surface(prediction), surface(truth)
    # distance_transform_edt measures to the nearest zero, so invert the surface.
    to_truth = ndimage.distance_transform_edt(~surface_t)
    to_prediction = ndimage.distance_transform_edt(~surface_p)
    return to_truth[surface_p], to_prediction[surface_t]


def assd(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = _as_masks(prediction, truth)
    if not prediction.any() or not truth.any():
        return math.nan
    forward, backward = surface_distances(prediction, truth)
    return float((forward.sum() + backward.sum()) / (forward.size + backward.size))


def hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = _as_masks(prediction, truth)
    if not prediction.any() or not truth.any():
        return math.nan
    forward, backward = surface_distances(prediction, truth)
    return float(np.percentile(np.concatenate([forward, backward]), 95))


def segmentation_metrics(prediction: np.ndarray, truth: np.ndarray,
                         dilation_ratio: float = 0.02) -> dict[str, float]:
    """All per-image metrics of ``METRIC_NAMES`` for one pair of 2-D masks."""
    prediction, truth = _as_masks(prediction, truth)
    if prediction.any() and truth.any():
        forward, backward = surface_distances(prediction, truth)
        distances = np.concatenate([forward, backward])
        assd_value = float(distances.mean())
        hd95_value = float(np.percentile(distances, 95))
    else:
        assd_value, hd95_value = assd(prediction, truth), hd95(prediction, truth)
    return {
        "dice": dice_score(prediction, truth),
        "recall": recall_score(prediction, truth),
        "boundary_iou": boundary_iou(prediction, truth, dilation_ratio),
        "assd": assd_value,
        "hd95": hd95_value,
    }


def summarise(per_image: list[dict[str, float]], names: tuple[str, ...] = METRIC_NAMES) -> dict:
    """Mean of each metric over the images where it is defined, and that image count."""
    summary: dict[str, float | int] = {"images": len(per_image)}
    for name in names:
        values = np.array([row[name] for row in per_image if name in row], np.float64)
        defined = values[np.isfinite(values)]
        summary[name] = float(defined.mean()) if defined.size else math.nan
        summary[f"{name}_images"] = int(defined.size)
    return summary


def mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean and population standard deviation (numpy's default, ddof=0) of the finite values."""
    array = np.array(values, np.float64)
    finite = array[np.isfinite(array)]
    if not finite.size:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def json_safe(value):
    """NaN is not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def object_level_metrics(prediction: np.ndarray, truth: np.ndarray, merge_radius: int | None = None) -> dict:
    """Object-level sensitivity and false objects per image over a stack of (N, [1,] H, W) masks.

    Objects are what scoring counts (``scoring.find_objects``, fragments merged with
    ``merge_radius``, the scoring default when None).  A true object is found when a predicted
    pixel lies on it; a predicted object that touches no true pixel is a false object.
    """
    from xiqa.operators.scoring import ScoringConfig, find_objects

    radius = ScoringConfig().merge_radius if merge_radius is None else merge_radius
    prediction, truth = np.asarray(prediction).astype(bool), np.asarray(truth).astype(bool)
    if prediction.shape != truth.shape or prediction.ndim < 2:
        raise ValueError(f'Arguments "prediction" and "truth" must be masks of one shape, got '
                         f"{prediction.shape} and {truth.shape}")
    prediction = prediction.reshape(-1, *prediction.shape[-2:])
    truth = truth.reshape(-1, *truth.shape[-2:])
    true_objects = found = false_objects = 0
    for predicted, expected in zip(prediction, truth, strict=True):
        for component, _ in find_objects(expected, radius):
            true_objects += 1
            found += bool((predicted & component).any())
        false_objects += sum(not (component & expected).any()
                             for component, _ in find_objects(predicted, radius))
    images = max(len(prediction), 1)
    return {"object_sensitivity": found / true_objects if true_objects else float("nan"),
            "true_objects": true_objects, "false_objects_per_image": false_objects / images,
            "merge_radius": radius}
