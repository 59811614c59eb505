"""Composite training images: real backgrounds, inserted objects with exact masks, hard negatives unmasked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from xiqa.training.composite import (
    OBJECT_KINDS,
    CompositeConfig,
    CompositeStream,
    backgrounds_for,
    make_composite,
)

REAL_CXR = Path(__file__).resolve().parents[1] / "data" / "real_cxr"
NO_NEGATIVES = CompositeConfig(marker_probability=0, text_probability=0, collimation_probability=0,
                               skin_fold_probability=0, breast_shadow_probability=0, grid_probability=0)


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    return backgrounds_for(REAL_CXR, "train")[0][1]


def test_splits_are_disjoint_by_patient():
    import json

    entries = json.loads((REAL_CXR / "manifest.json").read_text())["images"]
    groups: dict[str, set[str]] = {}
    for entry in entries:
        groups.setdefault(entry["group"], set()).add(entry["split"])
        assert entry["licence"] == "CC-BY-3.0" and len(entry["source"]["commit"]) == 40
    assert all(len(splits) == 1 for splits in groups.values())
    assert {"train", "validation", "held_out_clean", "held_out_devices"} <= {e["split"] for e in entries}


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_every_kind_is_inserted_with_its_own_mask_and_repeats_for_a_seed(background, kind):
    composite = make_composite(np.random.default_rng([11, OBJECT_KINDS.index(kind)]), background,
                               NO_NEGATIVES, kinds=[kind])
    assert [inserted.kind for inserted in composite.objects] == [kind]
    assert composite.mask.any() and composite.objects[0].pixels == int(composite.mask.sum())
    again = make_composite(np.random.default_rng([11, OBJECT_KINDS.index(kind)]), background,
                           NO_NEGATIVES, kinds=[kind])
    assert np.array_equal(again.image, composite.image) and np.array_equal(again.mask, composite.mask)
    assert composite.image.shape == composite.mask.shape


def test_an_empty_composite_has_an_empty_mask_even_with_markers_text_and_shutters(background):
    config = CompositeConfig(marker_probability=1, text_probability=1, collimation_probability=1,
                             skin_fold_probability=1, breast_shadow_probability=1, grid_probability=1)
    composite = make_composite(np.random.default_rng(3), background, config, kinds=[])
    assert not composite.mask.any()
    assert composite.image.max() > 0.7  # the burnt-in marker is there, bright, and unmasked


def test_metal_is_denser_than_what_lies_under_it(background):
    composite = make_composite(np.random.default_rng(8), background, NO_NEGATIVES, kinds=["coin"])
    import cv2

    ring = composite.mask.astype(bool)
    around = cv2.dilate(composite.mask, np.ones((9, 9), np.uint8)).astype(bool) & ~ring
    assert composite.image[ring].mean() > composite.image[around].mean() + 0.1


def test_stream_draws_new_images_each_epoch_and_repeats_under_a_seed(background):
    import torch

    stream = CompositeStream([background], samples_per_epoch=4, phantom_share=0.0)
    torch.manual_seed(0)
    first = [stream[index]["image"] for index in range(2)]
    second = [stream[index]["image"] for index in range(2)]
    torch.manual_seed(0)
    again = [stream[index]["image"] for index in range(2)]
    assert not np.array_equal(first[0], second[0])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert first[0].shape == (3, 256, 256) and stream[0]["label"].shape == (1, 256, 256)


def test_the_mediastinum_is_the_brightest_column_band_of_the_upper_thorax():
    from xiqa.training.composite import _mediastinum_x

    size = 512
    columns = np.arange(size)
    mediastinum = np.exp(-(((columns - 0.42 * size) / (0.05 * size)) ** 2))
    image = np.tile(0.2 + 0.6 * mediastinum, (size, 1)).astype(np.float32)
    image[:, : int(0.1 * size)] = 0.9  # a bright arm at the border is not the mediastinum
    assert abs(_mediastinum_x(image) - 0.42 * size) < 0.02 * size


def _runs(row: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])) == 1))


def test_tubes_down_the_mediastinum_follow_it_and_show_two_walls(background):
    from xiqa.training.composite import _mediastinum_x

    midline_tubes = 0
    for seed in range(12):
        composite = make_composite(np.random.default_rng([5, seed]), background, NO_NEGATIVES, kinds=["tube"])
        size = composite.mask.shape[0]
        top = composite.mask[: int(0.12 * size)]
        if not top.any():  # a chest drain, which enters from the side
            continue
        midline_tubes += 1
        _, columns = np.nonzero(top)
        assert abs(columns.mean() - _mediastinum_x(composite.image)) < 0.08 * size
        rows = [row for row in top if row.any()]
        # tram lines: the plastic walls seen edge on, with the lumen between them unmasked
        assert max(_runs(row) for row in rows) >= 2
    assert midline_tubes >= 4
