"""The shipped model on real radiographs it never saw in training (data/real_cxr, held-out splits):
the devices a radiographer would expect it to flag, and the clean plates it must leave Good.

The same nodes as the graph (preprocess, gate region, segmentation, scoring) on the PNGs; the whole
graph over DICOM versions of these plates is ``benchmarks/real_radiographs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from xiqa.operators.gate import judge_frontal_chest
from xiqa.operators.preprocess import to_network_input
from xiqa.operators.scoring import QualityResult, Verdict, counted_at_source, score_mask
from xiqa.operators.segmentation import DEFAULT_BUNDLE, load_segmentation_model, segment
from xiqa.training.datasets import read_raster

REAL_CXR = Path(__file__).resolve().parents[1] / "data" / "real_cxr"


@pytest.fixture(scope="module")
def model():
    return load_segmentation_model(DEFAULT_BUNDLE, device="cpu")


def _manifest() -> list[dict]:
    return json.loads((REAL_CXR / "manifest.json").read_text())["images"]


def _score(model, image_id: str) -> tuple[QualityResult, np.ndarray, tuple[int, int]]:
    """Quality and the counted mask at the PNG's size, as the graph computes them."""
    pixels = read_raster(REAL_CXR / f"{image_id}.png")
    network_input = to_network_input(pixels)
    decision = judge_frontal_chest(None, network_input[0])
    assert decision.frontal_chest, (image_id, decision.reason)
    segmentation = segment(model, network_input)
    quality = score_mask(segmentation.mask, region=decision.region.mask)
    counted = counted_at_source(segmentation.mask_for_source(pixels.shape), quality)
    return quality, counted, pixels.shape


@pytest.mark.parametrize("image_id", ["hannover_19073f37", "hannover_f64132c8", "hannover_f6d980a0"])
def test_the_pacemaker_can_is_counted_on_real_plates_soft_and_hard(model, image_id):
    """Two of the three are soft grey PA plates where the can is light grey, not white."""
    devices = json.loads((REAL_CXR / "devices.json").read_text())["images"][image_id]
    can = next(device for device in devices if device["device"] == "pacemaker can")
    quality, counted, shape = _score(model, image_id)
    polygon = np.zeros(shape, np.uint8)
    cv2.fillPoly(polygon, [np.array(can["polygon"], np.int32)], 1)
    assert counted[polygon > 0].sum() >= 50, "no counted object pixels on the pacemaker can"
    assert quality.verdict is not Verdict.GOOD


def test_held_out_clean_real_plates_are_rated_good(model):
    """The goal of the "Real radiographs" issue: >= 90 % Good, <= 0.2 false objects per image
    (measured at 14/15 and 0.20: a pinhead on 80b5f00f, two on the nodular c0f74558)."""
    held_out = [entry["id"] for entry in _manifest() if entry["split"] == "held_out_clean"]
    results = [_score(model, image_id)[0] for image_id in held_out]
    good = sum(quality.verdict is Verdict.GOOD for quality in results)
    false_objects = sum(len(quality.objects) for quality in results)
    assert len(held_out) == 15
    assert good >= 14, f"{good}/15 Good"
    assert false_objects / len(held_out) <= 0.2, f"{false_objects} false objects on 15 plates"
