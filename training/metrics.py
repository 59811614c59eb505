"""Segmentation metrics on binary masks.

Convention for empty sets: when both prediction and ground truth are empty,
Dice and recall are 1 (nothing to find, nothing found); when only the ground
truth is empty, recall is 1 and Dice is 0 (every predicted pixel is wrong).
"""

from __future__ import annotations

import numpy as np


def pooled_dice_recall(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and recall with true/false positives summed over all pixels of all images."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    true_positive = float(np.logical_and(prediction, truth).sum())
    predicted, actual = float(prediction.sum()), float(truth.sum())
    dice = 1.0 if predicted + actual == 0 else 2 * true_positive / (predicted + actual)
    recall = 1.0 if actual == 0 else true_positive / actual
    return {"dice": dice, "recall": recall}
