"""Segmentation metrics and the Focal Tversky loss against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from xiqa.training.losses import FocalTverskyLoss
from xiqa.training.metrics import (
    EMPTY_CONVENTIONS,
    assd,
    boundary_band,
    boundary_iou,
    dice_score,
    hd95,
    json_safe,
    mean_std,
    pooled_dice_recall,
    recall_score,
    segmentation_metrics,
    summarise,
    surface,
)


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


# A: rows 0-2, columns 0-2; B: the same square one column to the right (columns 1-3).
A = _square((10, 10), 0, 0, 3)
B = _square((10, 10), 0, 1, 3)


def test_dice_and_recall_by_hand() -> None:
    # |A| = |B| = 9, |A ∩ B| = 6 (columns 1-2): Dice = 12/18, recall = 6/9
    assert dice_score(A, B) == pytest.approx(2 / 3)
    assert recall_score(A, B) == pytest.approx(2 / 3)
    small = _square((10, 10), 0, 0, 2)  # 4 pixels, all inside A
    assert recall_score(small, A) == pytest.approx(4 / 9)
    assert dice_score(small, A) == pytest.approx(8 / 13)


def test_surface_is_the_ring_of_a_square_and_a_single_pixel_itself() -> None:
    assert surface(A).sum() == 8 and not surface(A)[1, 1]
    point = np.zeros((5, 5), bool)
    point[2, 2] = True
    np.testing.assert_array_equal(surface(point), point)


def test_assd_and_hd95_by_hand() -> None:
    # Ring A -> ring B distances: 0 for the 4 shared ring pixels, 1 for the other 4; the same
    # the other way round.  ASSD = 8 / 16; the pooled 95th percentile of eight 0s and eight 1s is 1.
    assert assd(A, B) == pytest.approx(0.5)
    assert hd95(A, B) == pytest.approx(1.0)
    p, q = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    p[1, 1], q[4, 5] = True, True  # two single pixels 5 apart (3-4-5 triangle)
    assert assd(p, q) == pytest.approx(5.0) and hd95(p, q) == pytest.approx(5.0)
    assert assd(A, A) == 0.0 and hd95(A, A) == 0.0


def test_hd95_pools_both_directions() -> None:
    # Truth: one pixel far away from a large predicted square; its 1 distance is < 5 % of the pool
    prediction = _square((64, 64), 10, 10, 20)   # ring of 76 pixels, all 0 from themselves
    truth = prediction.copy()
    truth[60, 60] = True                          # an extra isolated truth pixel
    forward = 0.0  # every prediction-surface pixel is on the truth surface
    assert assd(prediction, truth) == pytest.approx(
        (forward + math.hypot(60 - 29, 60 - 29)) / (76 + 77))
    assert hd95(prediction, truth) == 0.0


def test_boundary_iou_by_hand() -> None:
    # One-pixel bands (10 x 10 image: 0.02 * diagonal rounds below 1) are the two rings;
    # they share 4 of their 12 distinct pixels.
    assert boundary_iou(A, B) == pytest.approx(1 / 3)
    assert boundary_iou(A, B, dilation_ratio=0) == pytest.approx(1 / 3)
    assert boundary_iou(A, A) == 1.0


def test_boundary_band_width_on_the_256_grid() -> None:
    square = _square((256, 256), 100, 100, 20)
    # 0.02 * 362 = 7.2 -> 7 pixels: a 20 x 20 square keeps a 6 x 6 interior
    assert boundary_band(square, 7).sum() == 20 * 20 - 6 * 6
    touching = _square((256, 256), 0, 0, 20)  # the image edge counts as outside
    assert boundary_band(touching, 7).sum() == 20 * 20 - 6 * 6
    other = _square((256, 256), 100, 110, 20)  # shifted half a square to the right
    band_a, band_b = boundary_band(square, 7), boundary_band(other, 7)
    expected = (band_a & band_b).sum() / (band_a | band_b).sum()
    assert boundary_iou(square, other) == pytest.approx(expected)


@pytest.mark.parametrize("case", ["both_empty", "truth_empty", "prediction_empty"])
def test_empty_mask_conventions(case: str) -> None:
    empty = np.zeros((16, 16), bool)
    full = _square((16, 16), 4, 4, 5)
    prediction, truth = {"both_empty": (empty, empty), "truth_empty": (full, empty),
                         "prediction_empty": (empty, full)}[case]
    metrics = segmentation_metrics(prediction, truth)
    for name, expected in EMPTY_CONVENTIONS[case].items():
        if math.isnan(expected):
            assert math.isnan(metrics[name]), name
        else:
            assert metrics[name] == expected, name


def test_summarise_leaves_undefined_values_out_and_counts_images() -> None:
    empty = np.zeros((10, 10), bool)
    rows = [segmentation_metrics(A, B), segmentation_metrics(empty, empty),
            segmentation_metrics(A, empty)]
    summary = summarise(rows)
    assert summary["images"] == 3
    assert summary["dice"] == pytest.approx((2 / 3 + 1 + 0) / 3) and summary["dice_images"] == 3
    assert summary["recall"] == pytest.approx(2 / 3) and summary["recall_images"] == 1
    assert summary["assd"] == pytest.approx(0.5) and summary["assd_images"] == 1


def test_pooled_dice_recall_sums_pixels() -> None:
    empty = np.zeros((10, 10), bool)
    pooled = pooled_dice_recall(np.stack([A, empty]), np.stack([B, B]))
    assert pooled["dice"] == pytest.approx(2 * 6 / (9 + 18))
    assert pooled["recall"] == pytest.approx(6 / 18)
    assert pooled_dice_recall(empty, empty) == {"dice": 1.0, "recall": 1.0}


def test_metrics_reject_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError, match='"prediction" and "truth"'):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def test_mean_std_and_json_safe() -> None:
    stats = mean_std([1.0, 3.0, math.nan])
    assert stats == {"mean": 2.0, "std": 1.0, "n": 2}
    assert json_safe({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_focal_tversky_loss_by_hand() -> None:
    probability = torch.tensor([0.9, 0.2, 0.6, 0.1])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # TP = 0.9 + 0.2 = 1.1, FN = 0.1 + 0.8 = 0.9, FP = 0.6 + 0.1 = 0.7
    # TI = (1.1 + 1) / (1.1 + 0.7 * 0.9 + 0.3 * 0.7 + 1) = 2.1 / 2.94 = 5/7; loss = (2/7) ** 0.75
    loss = FocalTverskyLoss(sigmoid=False)(probability, target)
    assert loss.item() == pytest.approx((2 / 7) ** 0.75, rel=1e-6)
    logits = torch.log(probability / (1 - probability))  # default: inputs are logits
    assert FocalTverskyLoss()(logits.reshape(1, 1, 2, 2), target.reshape(1, 1, 2, 2)).item() == \
        pytest.approx((2 / 7) ** 0.75, rel=1e-5)
    # alpha weights false negatives: swapping alpha and beta gives TI = 2.1 / (2.1 + 0.27 + 0.49)
    swapped = FocalTverskyLoss(alpha=0.3, beta=0.7, sigmoid=False)(probability, target)
    assert swapped.item() == pytest.approx((1 - 2.1 / 2.86) ** 0.75, rel=1e-6)


def test_focal_tversky_loss_is_zero_for_a_perfect_prediction_and_sums_over_the_batch() -> None:
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert FocalTverskyLoss(sigmoid=False)(target, target).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match='"alpha" and "beta"'):
        FocalTverskyLoss(alpha=-1)
