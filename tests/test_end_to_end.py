"""The whole graph with the shipped weights on held-out phantoms (seeds never used in training)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from xiqa.app import build_settings, run_graph
from xiqa.dicom_fixtures.generate import write_fixture_set
from xiqa.operators.loader import expand_inputs
from xiqa.operators.preprocess import resize_mask
from xiqa.operators.segmentation import mask_at_source
from xiqa.training.metrics import pooled_dice_recall

HELD_OUT_SEED = 424242


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held_out")
    write_fixture_set(folder / "in", count=10, seed=HELD_OUT_SEED, size_range=(400, 900))
    settings = build_settings(list(expand_inputs([folder / "in" / "dicom"])), folder / "out")
    cases = run_graph(settings)
    manifest = {entry["sop_instance_uid"]: entry
                for entry in json.loads((folder / "in" / "manifest.json").read_text())}
    return folder, cases, manifest


def test_shipped_model_finds_planted_objects_with_dice_above_0_7_on_the_grid(analysed):
    folder, cases, manifest = analysed
    assert cases and all(case.ok for case in cases)
    grid_predictions, grid_truths, source_scores = [], [], []
    for case in cases:
        truth = cv2.imread(str(folder / "in" / manifest[case.source.sop_instance_uid]["mask"]),
                           cv2.IMREAD_GRAYSCALE) > 0
        grid_predictions.append(case.segmentation.mask)
        grid_truths.append(resize_mask(truth, 256, 256))
        source_scores.append((mask_at_source(case.segmentation.probability, truth.shape), truth))
    on_grid = pooled_dice_recall(np.stack(grid_predictions), np.stack(grid_truths))
    at_source = pooled_dice_recall(np.concatenate([p.ravel() for p, _ in source_scores]),
                                   np.concatenate([t.ravel() for _, t in source_scores]))
    print(f"held-out Dice on the 256 grid {on_grid}, at source resolution {at_source}")
    # DESIGN.md evaluates segmentation on the 256 x 256 grid: that is where 0.7 is required.  At source
    # resolution the upsampled mask is a little wider than the exact one (0.69 today): the floor there
    # only guards against regressions of the resampling.
    assert on_grid["dice"] >= 0.7, on_grid
    assert at_source["dice"] >= 0.65, at_source


def test_verdict_follows_the_formulas_in_every_report(analysed):
    folder, cases, _ = analysed
    for case in cases:
        report = json.loads((case.outputs["report_json"]).read_text())
        severities = []
        for item in report["objects"]:
            penalty = 1 / (1 + math.exp(-70 * (item["area_fraction"] - 0.1)))
            assert item["size_penalty"] == pytest.approx(penalty)
            severity = min(max(0.3 * item["location_weight"] + 0.7 * penalty, 0), 1)
            assert item["severity"] == pytest.approx(severity)
            severities.append(severity)
        assert report["q_img"] == pytest.approx(float(np.prod([1 - s for s in severities])))
        counted = [s for s, item in zip(severities, report["objects"], strict=True)
                   if item["object_class"] == "removable" and not item["expected"]]
        assert report["q_removable"] == pytest.approx(float(np.prod([1 - s for s in counted])))

        def verdict(q: float) -> str:
            return "Good" if q > 0.8 else "Acceptable" if q > 0.5 else "Poor"

        assert report["verdict_all_objects"] == verdict(report["q_img"])  # the thesis' verdict
        assert report["verdict_removable"] == verdict(report["q_removable"])
        assert report["verdict_basis"] == "removable objects"  # the default
        assert report["verdict"] == report["verdict_removable"]


def test_images_with_planted_objects_lose_quality(analysed):
    _, cases, manifest = analysed
    for case in cases:
        planted = manifest[case.source.sop_instance_uid]["objects"]
        if planted:
            assert case.quality.objects, "an image with planted objects got no finding"
            assert case.quality.q_img < 1.0
