"""Explanation checks: perturbation curves by hand, pointing game, randomisation, repeatability."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from xiqa.operators.saliency import SaliencyConfig, compute_saliency
from xiqa.training.explanation_metrics import (
    cascading_randomization,
    curve_auc,
    deletion_auc,
    difference_of_means,
    drop,
    evaluate_explanations,
    insertion_auc,
    network_predictor,
    perturbation_curve,
    pointing_game,
    pointing_hit,
    randomization_blocks,
    rank_correlation,
    repeatability,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A 20 x 20 image whose 4 x 10 bright bar (40 px, exactly 10 % of the pixels) is what a
# thresholding "model" segments: every perturbation step of 10 % is one whole bar's worth.
BAR = (slice(8, 12), slice(5, 15))


def bar_image() -> np.ndarray:
    image = np.full((3, 20, 20), 0.1, np.float32)
    image[:, BAR[0], BAR[1]] = 0.9
    return image


def threshold_predict(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0] > 0.5


def oracle_saliency() -> np.ndarray:
    saliency = np.zeros((20, 20))
    saliency[BAR] = 1.0
    return saliency


def test_deletion_and_insertion_curves_by_hand():
    image, good, bad = bar_image(), oracle_saliency(), 1.0 - oracle_saliency()
    # deleting the bar first: the prediction is gone after the first 10 % step
    curve = perturbation_curve(threshold_predict, image, good, "deletion")
    assert curve.tolist() == [1.0] + [0.0] * 10
    assert deletion_auc(threshold_predict, image, good) == pytest.approx(0.05)
    assert deletion_auc(threshold_predict, image, bad) == pytest.approx(0.95)
    # inserting into the all-zero baseline: nothing is predicted until the bar is back
    curve = perturbation_curve(threshold_predict, image, good, "insertion")
    assert curve.tolist() == [0.0] + [1.0] * 10
    assert insertion_auc(threshold_predict, image, good) == pytest.approx(0.95)
    assert insertion_auc(threshold_predict, image, bad) == pytest.approx(0.05)


def test_drop_is_dice_after_deleting_the_top_fifth():
    image = bar_image()
    assert drop(threshold_predict, image, oracle_saliency()) == 0.0
    assert drop(threshold_predict, image, 1.0 - oracle_saliency()) == 1.0
    # half of the bar among the top 20 %: the rest of the bar is still found, Dice 2*20/(40+20)
    half = np.zeros((20, 20))
    half[8:10, 5:15] = 2.0
    half[0:4, :10] = 1.0  # the next most salient 40 px lie outside the bar
    assert drop(threshold_predict, image, half) == pytest.approx(2 * 20 / 60)


def test_empty_prediction_on_an_image_without_object_scores_one():
    image = np.full((3, 20, 20), 0.1, np.float32)
    curve = perturbation_curve(threshold_predict, image, np.random.default_rng(0).random((20, 20)))
    assert curve.tolist() == [1.0] * 11  # two empty masks agree (training.metrics convention)


def test_curve_auc_is_trapezoidal_on_unit_interval():
    assert curve_auc([1.0, 0.0]) == 0.5
    assert curve_auc([0.0, 1.0, 1.0]) == 0.75


def test_perturbation_arguments_are_checked():
    with pytest.raises(ValueError, match='Argument "mode"'):
        perturbation_curve(threshold_predict, bar_image(), oracle_saliency(), "blur")
    with pytest.raises(ValueError, match="must agree"):
        deletion_auc(threshold_predict, bar_image(), np.zeros((10, 10)))


def test_pointing_game_hits_misses_and_tolerance():
    truth = np.zeros((20, 20), bool)
    truth[BAR] = True
    inside, outside = np.zeros((20, 20)), np.zeros((20, 20))
    inside[9, 7] = 1.0
    outside[9, 17] = 1.0  # three pixels right of the bar's last column (14)
    assert pointing_hit(inside, truth) is True
    assert pointing_hit(outside, truth) is False
    assert pointing_hit(outside, truth, tolerance=3) is True
    assert pointing_hit(outside, truth, tolerance=2.9) is False


def test_pointing_game_excludes_empty_ground_truth():
    """An image without an object is neither hit nor miss (a popular library counts a hit)."""
    truth = np.zeros((20, 20), bool)
    truth[BAR] = True
    empty = np.zeros((20, 20), bool)
    inside = np.zeros((20, 20))
    inside[9, 7] = 1.0
    outside = np.zeros((20, 20))
    outside[0, 0] = 1.0
    assert pointing_hit(inside, empty) is None
    result = pointing_game([inside, outside, inside, outside], [truth, truth, empty, empty])
    assert (result.hits, result.misses, result.excluded) == (1, 1, 2)
    assert result.accuracy == 0.5  # not 3/4 (empty = hit) nor 1/4 (empty = miss)
    assert math.isnan(pointing_game([inside], [empty]).accuracy)


def test_constant_map_points_nowhere():
    truth = np.zeros((20, 20), bool)
    truth[0, 0] = True  # where argmax of a constant map would land
    assert pointing_hit(np.zeros((20, 20)), truth) is False


def test_rank_correlation_conventions():
    ramp = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(ramp, ramp ** 3) == pytest.approx(1.0)
    assert rank_correlation(ramp, -ramp) == pytest.approx(-1.0)
    assert rank_correlation(np.ones((4, 4)), np.ones((4, 4))) == 1.0
    assert rank_correlation(np.ones((4, 4)), ramp) == 0.0


class SmallNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


LAYERS = (r"features\.[0-5]", "head")


def grad_cam(network: nn.Module, image: np.ndarray) -> np.ndarray:
    return compute_saliency(network, image, SaliencyConfig(layer_patterns=LAYERS)).combined


def edge_detector(network: nn.Module, image: np.ndarray) -> np.ndarray:
    """A fake explainer: image edges, whatever the network."""
    gray = image.mean(axis=0)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


def test_cascading_randomization_detects_a_model_independent_explainer():
    network = SmallNet()
    image = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    blocks = randomization_blocks(network)
    assert blocks == ["head", "features.4", "features.3", "features.1", "features.0"]
    fake = cascading_randomization(network, image, edge_detector)
    assert [step.rank_correlation for step in fake.steps] == pytest.approx([1.0] * 5)
    assert not fake.passed
    real = cascading_randomization(network, image, grad_cam)
    assert [step.block for step in real.steps] == blocks
    assert real.passed, [step.rank_correlation for step in real.steps]
    # the caller's network is untouched
    assert torch.equal(network.head.weight, SmallNet().head.weight)


def test_repeatability_and_difference_of_means():
    image = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    same = [grad_cam(SmallNet(0), image)]
    result = repeatability(same, [grad_cam(SmallNet(0), image)])
    assert result.correlations == (1.0,) and result.std == 0.0
    other = repeatability(same, [grad_cam(SmallNet(7), image)])
    assert other.mean < 1.0
    assert difference_of_means([0.8, 0.9], [0.5, 0.6]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="non-empty"):
        repeatability([], [])


def test_network_predictor_restores_training_mode():
    network = SmallNet().train()
    masks = network_predictor(network)(np.zeros((2, 3, 16, 16), np.float32))
    assert masks.shape == (2, 16, 16) and masks.dtype == bool
    assert network.training


def test_evaluate_explanations_report():
    network = SmallNet().eval()
    images = torch.from_numpy(np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32))
    labels = np.zeros((2, 32, 32), bool)
    labels[0, 10:20, 10:20] = True
    report = evaluate_explanations(network, images, labels, methods=("gradcam", "normgrad0"),
                                   config=SaliencyConfig(layer_patterns=LAYERS))
    for method in ("gradcam", "normgrad0"):
        entry = report[method]
        assert entry["pointing_excluded"] == 1
        assert entry["pointing_hits"] + entry["pointing_misses"] == 1
        for key in ("deletion_auc", "insertion_auc", "drop"):
            assert 0.0 <= entry[key] <= 1.0
