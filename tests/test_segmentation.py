"""Hysteresis thresholding of the network's probability map, and how a bundle carries it."""

from pathlib import Path

import numpy as np
import pytest
from xiqa.operators.segmentation import NetworkSpec, build_network, hysteresis_mask, load_segmentation_model
from xiqa.training.trainer import choose_seed_threshold, write_bundle


def _map_with_two_blobs() -> np.ndarray:
    """A confident object (peak 0.999, flanks at 0.85) and a faint dot that barely clears 0.8."""
    probability = np.zeros((32, 32), np.float32)
    probability[4:10, 4:10] = 0.85
    probability[6:8, 6:8] = 0.999
    probability[20:22, 20:22] = 0.83
    return probability


def test_hysteresis_keeps_a_confident_object_whole_and_drops_a_faint_one():
    mask, removed = hysteresis_mask(_map_with_two_blobs(), 0.8, 0.99)
    assert removed == 1
    assert mask[4:10, 4:10].all()  # the kept object extends down to the threshold, not the seed
    assert mask.sum() == 36 and mask.dtype == np.uint8


def test_without_a_seed_every_component_above_the_threshold_is_kept():
    mask, removed = hysteresis_mask(_map_with_two_blobs(), 0.8, None)
    assert removed == 0 and mask.sum() == 40


def test_a_seed_below_the_threshold_is_refused():
    with pytest.raises(ValueError, match='"seed_threshold" must not be below'):
        hysteresis_mask(_map_with_two_blobs(), 0.8, 0.7)


def test_seed_is_chosen_by_object_errors_and_prefers_the_lower_of_equal_ones():
    probability = _map_with_two_blobs()
    label = np.zeros_like(probability, dtype=bool)
    label[4:10, 4:10] = True  # the faint dot is a false object
    seed, errors = choose_seed_threshold(probability[None, None], label[None, None], 0.8,
                                         seeds=(0.9, 0.95, 0.9999))
    assert errors == {"None": 1.0, "0.9": 0.0, "0.95": 0.0, "0.9999": 1.0}  # 0.9999 misses the object
    assert seed == 0.9
    label[20:22, 20:22] = True  # now the dot is an object too: no seed is best
    seed, _ = choose_seed_threshold(probability[None, None], label[None, None], 0.8, seeds=(0.9,))
    assert seed is None


def test_a_bundle_carries_its_seed_threshold_to_the_loaded_model(tmp_path: Path):
    spec = NetworkSpec(encoder="mobilenet_v2")
    write_bundle(tmp_path / "b", build_network(spec), spec, name="random", description="untrained",
                 metrics={}, training={}, threshold=0.8, seed_threshold=0.99)
    model = load_segmentation_model(tmp_path / "b", device="cpu")
    assert (model.threshold, model.seed_threshold) == (0.8, 0.99)
