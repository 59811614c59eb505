"""Calibration as the product counts objects: over the chest, false objects per image limited."""

from pathlib import Path

import numpy as np
import pytest
from xiqa.training.operating_point import chest_regions, choose_operating_point

SIZE = 64
REAL_CXR = Path(__file__).resolve().parent.parent / "data" / "real_cxr"


def _stacks(blob_probability: float, blob_inside: bool = True):
    """Image 0: a labelled 10 x 10 device at p 0.97.  Image 1: clean, a 2 x 2 blob (not labelled)."""
    probabilities = np.zeros((2, 1, SIZE, SIZE), np.float32)
    labels = np.zeros_like(probabilities, bool)
    probabilities[0, 0, 20:30, 20:30] = 0.97
    labels[0, 0, 20:30, 20:30] = True
    probabilities[1, 0, 40:42, 40:42] = blob_probability
    regions = np.ones((2, SIZE, SIZE), bool)
    if not blob_inside:
        regions[1, 36:46, 36:46] = False
    return probabilities, labels, regions


def test_a_blob_less_certain_than_the_device_is_cut_by_the_threshold_or_seed():
    kept, tried = choose_operating_point(*_stacks(0.93), max_false_per_image=0.0)
    assert kept.object_sensitivity == 1.0
    assert kept.false_objects_per_image == 0.0
    loosest = next(p for p in tried if p.threshold == 0.5 and p.seed_threshold is None)
    assert loosest.false_objects_per_image == 0.5  # the blob on one of two images


def test_a_small_confident_blob_goes_by_the_seed_while_the_large_device_stays_by_its_area():
    kept, _ = choose_operating_point(*_stacks(0.99), max_false_per_image=0.0)
    assert (kept.object_sensitivity, kept.false_objects_per_image) == (1.0, 0.0)
    assert kept.seed_threshold > 0.99
    assert kept.sure_area is not None and 4 < kept.sure_area <= 100


def test_objects_outside_the_chest_are_not_false_so_the_loosest_point_is_kept():
    kept, _ = choose_operating_point(*_stacks(0.93, blob_inside=False), max_false_per_image=0.0)
    assert (kept.threshold, kept.seed_threshold, kept.sure_area) == (0.5, None, None)


def test_the_limit_holds_even_when_only_finding_nothing_meets_it():
    probabilities, labels, regions = _stacks(0.99)
    probabilities[1, 0, 40:52, 40:52] = 0.99  # a false object larger and surer than the device
    strict, _ = choose_operating_point(probabilities, labels, regions, max_false_per_image=0.0)
    assert (strict.object_sensitivity, strict.false_objects_per_image) == (0.0, 0.0)
    loose, _ = choose_operating_point(probabilities, labels, regions, max_false_per_image=0.5)
    assert (loose.object_sensitivity, loose.false_objects_per_image) == (1.0, 0.5)


def test_stacks_of_different_shapes_are_refused():
    probabilities, labels, regions = _stacks(0.9)
    with pytest.raises(ValueError, match="one shape"):
        choose_operating_point(probabilities, labels, regions[:1], max_false_per_image=0.1)


def test_chest_regions_of_a_real_plate_cover_its_middle_and_not_its_corners():
    from xiqa.operators.preprocess import to_network_input
    from xiqa.training.datasets import read_raster

    plate = read_raster(REAL_CXR / "hannover_0957ce54.png")
    region = chest_regions(to_network_input(plate)[:1])[0]
    assert region.shape == (256, 256)
    assert region[128, 128] and 0.2 < region.mean() < 0.8
    assert not region[:10, :10].any() and not region[-10:, -10:].any()


def test_false_objects_are_counted_only_where_the_labels_are_complete():
    probabilities, labels, regions = _stacks(0.93)
    judged_everywhere, _ = choose_operating_point(probabilities, labels, regions, max_false_per_image=0.0)
    assert judged_everywhere.threshold > 0.9 or judged_everywhere.seed_threshold is not None
    # the clean image's labels are not trusted: its blob may be an unlabelled device
    kept, _ = choose_operating_point(probabilities, labels, regions, max_false_per_image=0.0,
                                     labels_complete=np.array([True, False]))
    assert (kept.threshold, kept.seed_threshold, kept.sure_area) == (0.5, None, None)
    with pytest.raises(ValueError, match="at least one"):
        choose_operating_point(probabilities, labels, regions, 0.1, labels_complete=np.array([False, False]))
