"""The learned lung-field network on real plates, and the acquisition checks measured on its outline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from xiqa.operators.acquisition import AcquisitionConfig, CheckStatus, assess_acquisition
from xiqa.operators.gate import judge_frontal_chest
from xiqa.operators.lung_fields import load_lung_model, split_lung_fields
from xiqa.operators.preprocess import to_network_input

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = sorted((ROOT / "data" / "lung_fields" / "v7labs").glob("hannover_*.png"))


def _grid(plate: str, crop: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    pixels = cv2.imread(str(ROOT / "data" / "real_cxr" / f"{plate}.png"), cv2.IMREAD_GRAYSCALE)
    return to_network_input(pixels[crop].astype(np.float32) / 255)[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("reference", REFERENCE, ids=lambda path: path.stem)
def test_the_shipped_network_outlines_both_lungs_as_the_reference_masks_do(reference: Path) -> None:
    labels = load_lung_model().lung_labels(_grid(reference.stem))
    truth = cv2.imread(str(reference), cv2.IMREAD_GRAYSCALE) > 0
    assert _dice(labels > 0, truth) >= 0.85
    columns = np.arange(labels.shape[1])
    left_x, right_x = (columns[(labels == value).any(axis=0)].mean() for value in (1, 2))
    assert left_x < labels.shape[1] / 2 < right_x  # label 1 on the image's left, 2 on its right


def test_a_plate_cut_above_the_apices_fails_cut_off_at_both_apices_only() -> None:
    plate = "hannover_f6d980a0"
    config = AcquisitionConfig()  # the network's outline
    whole = _grid(plate)
    whole_check = assess_acquisition(whole, judge_frontal_chest(None, whole).region, None,
                                     config=config).by_name("anatomy_cut_off")
    rows = cv2.imread(str(ROOT / "data" / "real_cxr" / f"{plate}.png"), cv2.IMREAD_GRAYSCALE).shape[0]
    cut = _grid(plate, (slice(int(0.25 * rows), None), slice(None)))
    result = assess_acquisition(cut, judge_frontal_chest(None, cut).region, None, config=config)
    check = result.by_name("anatomy_cut_off")
    assert result.lungs_from == "network"
    assert not {"right apex", "left apex"} & set(whole_check.findings["cut_off"])
    assert {"right apex", "left apex"} <= set(check.findings["cut_off"])
    assert check.status is CheckStatus.FAIL
    assert not any("costophrenic" in landmark for landmark in check.findings["cut_off"])


def test_a_blank_or_noise_image_has_no_lung_fields() -> None:
    model = load_lung_model()
    for level in (0.0, 0.5, 1.0):
        assert not model.lung_labels(np.full((256, 256), level, np.float32)).any()
    noise = np.random.default_rng(0).normal(0.5, 0.1, (256, 256)).astype(np.float32)
    assert (model.lung_labels(np.clip(noise, 0, 1)) > 0).mean() < 0.01


def test_lungs_joined_over_the_mediastinum_are_split_at_its_narrowest_column() -> None:
    mask = np.zeros((100, 100), bool)
    mask[20:80, 10:45] = True
    mask[20:80, 55:90] = True
    mask[40:45, 45:55] = True  # a thin bridge, columns 45..54
    mask[0:2, 0:2] = True  # a speck: noise, not a lung
    labels = split_lung_fields(mask)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[50, 20] == 1 and labels[50, 80] == 2 and labels[0, 0] == 0
    assert labels[42, 40] == 1 and labels[42, 60] == 2
    cut = np.nonzero(labels[42] == 2)[0][0]
    assert 45 <= cut <= 55


def test_a_file_that_is_no_lung_model_is_refused_by_name(tmp_path: Path) -> None:
    import torch

    stranger = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, stranger)
    with pytest.raises(ValueError, match=r"^weights\.pt: not a lung-field model"):
        load_lung_model(stranger)
