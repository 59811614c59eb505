"""Hysteresis thresholding of the network's probability map, and how a bundle carries it."""

from pathlib import Path

import numpy as np
import pytest
from xiqa.operators.segmentation import NetworkSpec, build_network, hysteresis_mask, load_segmentation_model
from xiqa.training.trainer import choose_seed_threshold, choose_sure_area, write_bundle


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


def test_a_component_as_large_as_the_sure_area_is_kept_without_the_seed():
    probability = _map_with_two_blobs()
    probability[6:8, 6:8] = 0.9  # the object is no longer certain anywhere
    assert hysteresis_mask(probability, 0.8, 0.99)[0].sum() == 0
    mask, removed = hysteresis_mask(probability, 0.8, 0.99, sure_area=36)
    assert mask[4:10, 4:10].all() and mask.sum() == 36 and removed == 1  # the 4-pixel dot still goes


def test_sure_area_is_the_smallest_of_the_cheapest():
    probability = _map_with_two_blobs()
    probability[6:8, 6:8] = 0.9
    label = np.zeros_like(probability, dtype=bool)
    label[4:10, 4:10] = True
    area, costs = choose_sure_area(probability[None, None], label[None, None], 0.8, 0.99, areas=(100, 30, 2))
    # 100 misses the object; 30 keeps it and drops the dot; 2 keeps the dot too
    assert costs == {"None": round(0.7 / 0.3, 6), "100": round(0.7 / 0.3, 6), "30": 0.0, "2": 1.0}
    assert area == 30
    assert choose_sure_area(probability[None, None], label[None, None], 0.8, None) == (None, {})


def test_a_seed_below_the_threshold_is_refused():
    with pytest.raises(ValueError, match='"seed_threshold" must not be below'):
        hysteresis_mask(_map_with_two_blobs(), 0.8, 0.7)


def test_seed_is_chosen_by_object_cost_and_prefers_the_lower_of_equal_ones():
    probability = _map_with_two_blobs()
    label = np.zeros_like(probability, dtype=bool)
    label[4:10, 4:10] = True  # the faint dot is a false object
    seed, errors = choose_seed_threshold(probability[None, None], label[None, None], 0.8,
                                         seeds=(0.9, 0.95, 0.9999))
    # 0.9999 misses the object, which costs more than the false dot that no seed removes
    assert errors == {"None": 1.0, "0.9": 0.0, "0.95": 0.0, "0.9999": round(0.7 / 0.3, 6)}
    assert seed == 0.9
    label[20:22, 20:22] = True  # now the dot is an object too: no seed is best
    seed, _ = choose_seed_threshold(probability[None, None], label[None, None], 0.8, seeds=(0.9,))
    assert seed is None


def test_a_bundle_carries_its_seed_threshold_to_the_loaded_model(tmp_path: Path):
    spec = NetworkSpec(encoder="mobilenet_v2")
    write_bundle(tmp_path / "b", build_network(spec), spec, name="random", description="untrained",
                 metrics={}, training={}, threshold=0.8, seed_threshold=0.99, sure_area=30)
    model = load_segmentation_model(tmp_path / "b", device="cpu")
    assert (model.threshold, model.seed_threshold, model.sure_area) == (0.8, 0.99, 30)


def test_loading_runs_torch_on_one_thread_and_gives_the_caller_its_thread_count_back(monkeypatch):
    """The caller loads, the graph's thread runs: a load on several OpenMP threads would leave the caller
    a thread team that halves the graph's torch speed on 2 cores."""
    import torch
    from xiqa.operators import segmentation

    threads_while_loading = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        threads_while_loading.append(torch.get_num_threads())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(segmentation.torch, "load", recording_load)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = load_segmentation_model(segmentation.DEFAULT_BUNDLE, device="cpu")
        assert threads_while_loading == [1] and torch.get_num_threads() == 2
        assert model.networks[0].training is False
    finally:
        torch.set_num_threads(before)


def test_default_model_is_the_bundle_at_holoscan_model_path_else_the_shipped_one(tmp_path, monkeypatch):
    from xiqa.operators.segmentation import DEFAULT_BUNDLE, default_model

    spec = NetworkSpec(encoder="mobilenet_v2")
    write_bundle(tmp_path / "models" / "fold_0", build_network(spec), spec, name="random",
                 description="untrained", metrics={}, training={})
    monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "models"))
    assert default_model() == tmp_path / "models"
    assert default_model(str(tmp_path / "models" / "fold_0")) == tmp_path / "models" / "fold_0"
    (tmp_path / "empty").mkdir()
    assert default_model(str(tmp_path / "empty")) == DEFAULT_BUNDLE
    monkeypatch.delenv("HOLOSCAN_MODEL_PATH")
    assert default_model() == DEFAULT_BUNDLE
