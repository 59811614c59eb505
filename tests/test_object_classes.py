"""Object classes: features of an object's crop, the shipped classifier, the removable score, the ECG rule."""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest
from xiqa.operators.object_classes import (
    CATEGORY_CLASS,
    FEATURE_NAMES,
    ClassConfig,
    EcgRule,
    ObjectClass,
    ObjectClassifier,
    classify_quality,
    ecg_expected,
    load_classifier,
    object_features,
)
from xiqa.operators.scoring import ScoringConfig, Verdict, score_mask

GRID = 256


def _feature(features: np.ndarray, name: str) -> float:
    return float(features[FEATURE_NAMES.index(name)])


def _plate() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(0.4 + 0.05 * rng.standard_normal((GRID, GRID)), 0, 1).astype(np.float32)


def _sided_classifier() -> ObjectClassifier:
    """Device right of the image's middle, removable (an ECG lead) left of it."""
    size = len(FEATURE_NAMES)
    column = FEATURE_NAMES.index("centroid_x")
    mean, scale = np.zeros(size, np.float32), np.ones(size, np.float32)
    mean[column], scale[column] = 0.5, 0.05
    hidden = np.zeros((size, 2), np.float32)
    hidden[column] = (1.0, -1.0)  # unit 0 fires right of the middle, unit 1 left of it
    heads = np.array([[0.0, 10.0], [10.0, 0.0]], np.float32)  # (removable, device) from (right, left)
    zeros = np.zeros(2, np.float32)
    return ObjectClassifier(mean, scale, hidden, zeros, heads, zeros, heads, zeros,
                            ("ecg_lead_wire", "central_line"), version="sided")


def _two_objects() -> np.ndarray:
    """A wide blob left of the middle and a wire right of it, both in the central region."""
    mask = np.zeros((GRID, GRID), np.uint8)
    cv2.circle(mask, (70, 120), 18, 1, -1)
    cv2.line(mask, (180, 60), (185, 200), 1, 2)
    return mask


def test_a_vertical_wire_is_elongated_thin_and_vertical_and_a_disc_is_compact():
    image = _plate()
    wire = np.zeros((GRID, GRID), np.uint8)
    cv2.line(wire, (128, 30), (128, 220), 1, 2)
    disc = np.zeros((GRID, GRID), np.uint8)
    cv2.circle(disc, (60, 80), 8, 1, -1)
    image[wire > 0] += 0.3
    wire_features, disc_features = object_features(image, wire > 0), object_features(image, disc > 0)
    assert _feature(wire_features, "log_elongation") > _feature(disc_features, "log_elongation") + 2
    assert _feature(wire_features, "vertical") > 0.99
    assert _feature(disc_features, "compactness") > 3 * _feature(wire_features, "compactness")
    assert _feature(wire_features, "thickness") < _feature(disc_features, "thickness")
    assert _feature(wire_features, "contrast") > 0.2 > abs(_feature(disc_features, "contrast"))
    assert _feature(wire_features, "off_midline") < 0.01 < _feature(disc_features, "off_midline")
    assert np.isfinite(wire_features).all() and wire_features.shape == (len(FEATURE_NAMES),)


def test_features_refuse_an_empty_mask_and_another_shape():
    with pytest.raises(ValueError, match='"mask" must contain'):
        object_features(_plate(), np.zeros((GRID, GRID), bool))
    with pytest.raises(ValueError, match='"mask" must have'):
        object_features(_plate(), np.ones((10, 10), bool))


def test_the_shipped_classifier_is_small_knows_the_categories_and_classes_a_plate_in_under_20_ms():
    from importlib import resources

    shipped = resources.files("xiqa.operators") / "object_classes.npz"
    assert shipped.is_file() and len(shipped.read_bytes()) < 300_000
    classifier = load_classifier()
    assert set(classifier.categories) <= set(CATEGORY_CLASS) and len(classifier.categories) >= 10
    image, mask = _plate(), _two_objects()
    quality = score_mask(mask)
    classify_quality(quality, image, None, classifier)  # warm up
    started = time.perf_counter()
    for _ in range(10):
        classified = classify_quality(quality, image, None, classifier)
    assert (time.perf_counter() - started) / 10 < 0.020
    assert all(f.object_class in {"removable", "device"} and 0.5 <= f.class_confidence <= 1
               for f in classified.objects)


def test_only_removable_objects_lower_the_default_verdict_and_devices_are_listed():
    image, mask = _plate(), _two_objects()
    quality = score_mask(mask)
    assert len(quality.objects) == 2
    classified = classify_quality(quality, image, None, _sided_classifier(),
                                  ClassConfig(ecg_rule=EcgRule.REMOVABLE))
    by_side = {f.centroid_x < 0.5: f for f in classified.objects}
    assert by_side[True].object_class == ObjectClass.REMOVABLE.value
    assert by_side[False].object_class == ObjectClass.DEVICE.value
    assert by_side[False].category == "central_line" and by_side[False].class_confidence > 0.99
    assert classified.q_removable == pytest.approx(1 - by_side[True].severity)
    assert classified.q_img == quality.q_img < classified.q_removable
    assert classified.default_quality == classified.q_removable
    assert classified.default_verdict == classified.verdict_removable
    assert classified.devices == (by_side[False],)
    report = classified.to_dict()
    assert report["verdict"] == classified.verdict_removable.value
    assert report["verdict_all_objects"] == quality.verdict.value
    assert (report["removable_count"], report["device_count"], report["verdict_basis"]) == \
        (1, 1, "removable objects")


def test_a_site_that_counts_devices_gets_the_verdict_over_all_objects():
    image, mask = _plate(), _two_objects()
    quality = score_mask(mask)
    classified = classify_quality(quality, image, None, _sided_classifier(),
                                  ClassConfig(count_devices=True, ecg_rule=EcgRule.REMOVABLE))
    assert classified.default_quality == quality.q_img
    assert classified.default_verdict == quality.verdict
    assert classified.to_dict()["verdict_basis"] == "all objects"


def test_ecg_leads_on_an_ap_plate_are_expected_and_do_not_lower_the_removable_score():
    image, mask = _plate(), _two_objects()
    quality = score_mask(mask)
    classified = classify_quality(quality, image, None, _sided_classifier(), ClassConfig(),
                                  view_position="AP")
    lead = next(f for f in classified.objects if f.category == "ecg_lead_wire")
    assert lead.expected and lead.object_class == "removable"
    assert classified.q_removable == 1.0 and classified.default_verdict == Verdict.GOOD
    assert classified.expected_objects == (lead,) and classified.removable_objects == ()
    assert classified.ecg_rule == "ECG leads expected: View Position AP (bedside plate)"
    on_pa = classify_quality(quality, image, None, _sided_classifier(), ClassConfig(), view_position="PA")
    assert on_pa.q_removable < 1.0 and on_pa.ecg_rule == "ECG leads removable: View Position PA"


def test_the_ecg_rule_says_which_rule_applied():
    assert ecg_expected(EcgRule.BY_VIEW, "", ()) == \
        (False, "ECG leads removable: no View Position, and no tube, line or drain is seen")
    assert ecg_expected(EcgRule.EXPECTED, "PA", ())[0]
    assert not ecg_expected(EcgRule.REMOVABLE, "AP", ())[0]
    with pytest.raises(ValueError, match='"ecg_rule" must be one of'):
        ClassConfig(ecg_rule="sometimes")


def test_a_classifier_file_made_for_other_features_is_refused(tmp_path):
    path = _sided_classifier().save(tmp_path / "classes.npz")
    assert load_classifier(path).version == "sided"
    stored = dict(np.load(path))
    stored["features"] = np.array(FEATURE_NAMES[:-1] + ("something_else",))
    np.savez(tmp_path / "other.npz", **stored)
    with pytest.raises(ValueError, match="other object features"):
        load_classifier(tmp_path / "other.npz")


def test_classes_follow_the_objects_of_scoring_with_merged_fragments():
    image = _plate()
    mask = np.zeros((GRID, GRID), np.uint8)
    for start in range(40, 200, 12):  # a dashed lead: pieces 4 pixels apart, one object after merging
        cv2.line(mask, (60, start), (60, start + 8), 1, 1)
    quality = score_mask(mask, config=ScoringConfig(merge_radius=4))
    assert len(quality.objects) == 1 and quality.objects[0].fragments > 5
    classified = classify_quality(quality, image, None, _sided_classifier(),
                                  ClassConfig(ecg_rule="removable"))
    assert classified.objects[0].object_class == "removable"


def test_ecg_leads_are_named_from_a_lower_probability_than_other_categories():
    sure = _sided_classifier()
    unsure = dataclasses.replace(sure, category_weight=sure.category_weight * 0.02)  # p about 0.7
    image, mask = _plate(), _two_objects()
    classified = classify_quality(score_mask(mask), image, None, unsure, ClassConfig(), view_position="AP")
    by_side = {f.centroid_x < 0.5: f for f in classified.objects}
    assert 0.6 < by_side[True].category_confidence < 0.9 and by_side[True].category == "ecg_lead_wire"
    assert by_side[True].expected  # so the ECG rule can keep it out of the verdict
    assert by_side[False].category is None and by_side[False].object_class == "device"  # below 0.9


def test_plate_goals_count_device_plates_and_removable_plates_as_the_issue_defines_them():
    from xiqa.training.object_classes import PLATE_GOALS, goal_shares, tally_plate_goals

    image, mask = _plate(), _two_objects()
    # one plate result for every labelling below: a device listed, a removable object counted
    classified = classify_quality(score_mask(mask), image, None, _sided_classifier(),
                                  ClassConfig(ecg_rule=EcgRule.REMOVABLE))
    assert classified.devices and classified.default_verdict == Verdict.ACCEPTABLE  # meets both
    tallies: dict[str, list[int]] = {}
    # an AP plate with a central line only: a device plate, listed
    tally_plate_goals(tallies, ["central_line"], "AP", [True], classified)
    # an AP plate with a line and ECG leads (expected by the ECG rule): not "devices only"
    tally_plate_goals(tallies, ["central_line", "ecg_lead_wire"], "AP", [True, True], classified)
    # a PA plate with a chain over the chest: a removable plate, rated Poor or Acceptable
    tally_plate_goals(tallies, ["jewellery_chain"], "PA", [True], classified)
    # a chain outside the chest and an ECG lead on an AP plate: neither makes a removable plate
    tally_plate_goals(tallies, ["jewellery_chain", "ecg_electrode"], "AP", [False, True], classified)
    assert tallies == {
        "device_only_ap_good_or_acceptable": [1, 1], "device_only_ap_listing_a_device": [1, 1],
        "device_or_ecg_ap_good_or_acceptable": [2, 2], "device_plates_listing_a_device": [2, 2],
        "removable_plates_poor_or_acceptable": [1, 1]}
    shares = goal_shares(tallies)
    assert list(shares) == list(PLATE_GOALS) and shares["device_plates_listing_a_device"] == "2/2 (100 %)"
