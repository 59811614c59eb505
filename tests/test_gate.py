"""The input gate and the chest region on real radiographs (pydicom-data's NEMA WG04 CR plates and the
held-out real chest plates of data/real_cxr), on phantoms and on images that are not chests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from xiqa.operators.chest_region import find_chest_region
from xiqa.operators.gate import NOT_FRONTAL_CHEST, judge_frontal_chest, tag_problem
from xiqa.operators.loader import load_source_image
from xiqa.operators.preprocess import resize_image, to_network_input
from xiqa.training.datasets import read_raster

REAL_CXR = Path(__file__).resolve().parents[1] / "data" / "real_cxr"
testdata = pytest.importorskip("pydicom.data")


def _grid(pixels: np.ndarray) -> np.ndarray:
    return to_network_input(pixels)[0]


@pytest.fixture(scope="module")
def chest_cr():
    """NEMA WG04 RG1: a real CR PA chest plate, MONOCHROME1, 1841 x 1955."""
    return load_source_image(Path(testdata.get_testdata_file("RG1_UNCR.dcm")))


@pytest.fixture(scope="module")
def extremity_cr():
    """NEMA WG04 RG3: a real CR of the lower leg and ankle."""
    return load_source_image(Path(testdata.get_testdata_file("RG3_UNCR.dcm")))


def test_real_chest_plate_passes_and_its_region_spans_both_lungs(chest_cr):
    decision = judge_frontal_chest(chest_cr.dataset, _grid(chest_cr.pixels))
    assert decision.frontal_chest, decision.reason
    region = decision.region
    assert 0.3 < region.area_fraction < 0.8
    left, right = region.lungs
    assert left.centroid_x < 0.45 < 0.55 < right.centroid_x
    assert region.mediastinum_contrast > 0.1
    # the corners (markers, collimation) are outside the chest
    assert not region.mask[:20, :20].any() and not region.mask[-20:, -20:].any()


def test_extremity_with_forged_chest_tags_is_refused_by_the_image_check(extremity_cr):
    dataset = copy.deepcopy(extremity_cr.dataset)
    dataset.BodyPartExamined, dataset.ViewPosition = "CHEST", "PA"
    decision = judge_frontal_chest(dataset, _grid(extremity_cr.pixels))
    assert not decision.frontal_chest
    assert decision.reason.startswith(f"{NOT_FRONTAL_CHEST}: image check:")
    assert not decision.region.mask.any()


def test_extremity_tag_is_followed(extremity_cr):
    decision = judge_frontal_chest(extremity_cr.dataset, _grid(extremity_cr.pixels))
    assert decision.reason == f"{NOT_FRONTAL_CHEST}: Body Part Examined is EXTREMITY"


def test_lateral_view_position_refuses_a_chest(chest_cr):
    dataset = copy.deepcopy(chest_cr.dataset)
    dataset.ViewPosition = "LL"
    decision = judge_frontal_chest(dataset, _grid(chest_cr.pixels))
    assert decision.reason == f"{NOT_FRONTAL_CHEST}: View Position is LL (not frontal)"


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({}, None),
        ({"BodyPartExamined": "CHEST", "ViewPosition": "AP"}, None),
        ({"BodyPartExamined": "ABDOMEN"}, "Body Part Examined is ABDOMEN"),
        ({"ViewPosition": "RL"}, "View Position is RL (not frontal)"),
        ({"ImageLaterality": "L"}, "Image Laterality L with no chest Body Part (a paired body part)"),
        ({"BodyPartExamined": "CHEST", "ImageLaterality": "L"}, None),
    ],
)
def test_tag_rules(tags, problem):
    assert tag_problem(tags) == problem


def test_missing_tags_leave_the_decision_to_the_image(chest_cr, extremity_cr):
    assert judge_frontal_chest(None, _grid(chest_cr.pixels)).frontal_chest
    assert not judge_frontal_chest(None, _grid(extremity_cr.pixels)).frontal_chest


@pytest.mark.parametrize("pattern", ["uniform", "bars", "gradient", "noise"])
def test_test_patterns_are_not_chests(pattern):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512] / 512
    image = {
        "uniform": np.full((512, 512), 0.5),
        "bars": (np.floor(xx * 8) % 2) * 0.8 + 0.1,
        "gradient": xx,
        "noise": rng.uniform(0, 1, (512, 512)),
    }[pattern]
    decision = judge_frontal_chest(None, _grid(image.astype(np.float32)))
    assert not decision.frontal_chest, pattern


def test_every_real_frontal_chest_plate_passes_the_gate():
    """All 59 real plates, the ICU ones with devices, a shoulder prosthesis and tight collimation too."""
    manifest = json.loads((REAL_CXR / "manifest.json").read_text())["images"]
    assert len(manifest) >= 50
    refused = [
        entry["id"]
        for entry in manifest
        if not find_chest_region(
            np.clip(resize_image(read_raster(REAL_CXR / entry["file"]), 256, 256), 0, 1)
        ).found
    ]
    assert refused == []


def test_phantoms_pass_the_gate():
    from xiqa.dicom_fixtures.phantom import render_phantom

    rng = np.random.default_rng(7)
    for _ in range(6):
        phantom = render_phantom(rng, int(rng.integers(400, 900)), int(rng.integers(400, 900)))
        assert find_chest_region(_grid(phantom.image)).found


def test_region_covers_a_lung_that_is_not_dark_by_mirroring_the_other():
    """c0f74558: coarse nodules make the lower right lung (image left) bright; the mirrored left
    lung keeps it inside the region, so an object there counts."""
    pixels = np.clip(resize_image(read_raster(REAL_CXR / "hannover_c0f74558.png"), 256, 256), 0, 1)
    region = find_chest_region(pixels)
    assert region.found
    assert region.mask[int(0.75 * 256), int(0.2 * 256)] and region.mask[int(0.75 * 256), int(0.8 * 256)]
    columns = np.nonzero(region.mask.any(axis=0))[0]
    assert abs((columns.min() + columns.max()) / 2 - 128) < 20  # about symmetric on this centred plate


def _whited_out(chest_cr) -> np.ndarray:
    """RG1 with the patient's left hemithorax (image right) turned white, as a large effusion or a
    collapsed lung does: the lung finder then sees one lung field."""
    grid = _grid(chest_cr.pixels).copy()
    grid[:, 128:] = np.clip(grid[:, 128:] + 0.45, 0, 1)
    return grid


def test_frontal_chest_whose_lungs_are_not_found_is_scored_with_an_estimated_region(chest_cr):
    grid = _whited_out(chest_cr)
    assert not find_chest_region(grid).found
    decision = judge_frontal_chest(chest_cr.dataset, grid, source_shape=chest_cr.pixels.shape)
    assert decision.frontal_chest and decision.reason is None
    region = decision.region
    assert region.estimated and not region.found
    assert region.problem.startswith("found 1 lung field(s)")
    # both hemithoraces count, the white one too; the corners (markers, collimation) do not
    assert region.mask[128, 64] and region.mask[128, 192]
    assert not region.mask[:8, :8].any() and not region.mask[-8:, -8:].any()
    described = decision.to_dict()["chest_region"]
    assert described["estimated"] is True and described["estimated_from"] in ("body outline", "template")
    assert described["problem"] == region.problem
    # with no tags one lung field is enough for the image check
    assert judge_frontal_chest(None, grid).frontal_chest


def test_found_lung_fields_give_a_region_that_is_not_estimated(chest_cr):
    region = judge_frontal_chest(chest_cr.dataset, _grid(chest_cr.pixels)).region
    assert region.found and not region.estimated
    assert region.to_dict()["estimated"] is False


def test_chest_pixels_with_a_tag_naming_another_body_part_are_refused(chest_cr):
    dataset = copy.deepcopy(chest_cr.dataset)
    dataset.BodyPartExamined = "SKULL"
    decision = judge_frontal_chest(dataset, _grid(chest_cr.pixels))
    assert decision.reason == f"{NOT_FRONTAL_CHEST}: Body Part Examined is SKULL"


def test_extremity_with_forged_chest_tags_is_refused_as_a_limb(extremity_cr):
    dataset = copy.deepcopy(extremity_cr.dataset)
    dataset.BodyPartExamined, dataset.ViewPosition = "CHEST", "AP"
    decision = judge_frontal_chest(dataset, _grid(extremity_cr.pixels),
                                   source_shape=extremity_cr.pixels.shape)
    assert not decision.frontal_chest
    assert "a limb" in decision.reason


@pytest.mark.parametrize("pattern", ["uniform", "bars", "noise", "ramp", "screenshot"])
def test_test_patterns_with_forged_chest_tags_are_refused(chest_cr, pattern):
    import cv2

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:512, 0:640] / 640
    screenshot = np.full((512, 640), 240, np.uint8)  # OpenCV draws text on 8-bit images only
    for row in range(40, 500, 24):
        cv2.putText(screenshot, "Patient 12345  CHEST PA  accepted", (20, row), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    12, 1, cv2.LINE_AA)
    image = {
        "uniform": np.full((512, 640), 0.3),
        "bars": (np.floor(xx * 8) % 2) * 0.8 + 0.1,
        "noise": rng.uniform(0, 1, (512, 640)),
        "ramp": xx,
        "screenshot": screenshot / 255,
    }[pattern].astype(np.float32)
    dataset = copy.deepcopy(chest_cr.dataset)
    decision = judge_frontal_chest(dataset, _grid(image), source_shape=image.shape)
    assert not decision.frontal_chest, pattern
    assert decision.reason.startswith(f"{NOT_FRONTAL_CHEST}: image check:")


def test_strong_evidence_never_fires_on_the_real_plates():
    """No real chest of data/real_cxr looks like a limb or like no radiograph at all: where its lung
    fields were not found, tags saying chest PA would keep it scored."""
    from xiqa.operators.chest_region import body_outline
    from xiqa.operators.image_evidence import strong_evidence_against_chest

    manifest = json.loads((REAL_CXR / "manifest.json").read_text())["images"]
    for entry in manifest:
        pixels = read_raster(REAL_CXR / entry["file"])
        grid = np.clip(resize_image(pixels, 256, 256), 0, 1)
        aspect = pixels.shape[1] / pixels.shape[0]
        assert strong_evidence_against_chest(grid, body_outline(grid), aspect) is None, entry["id"]
