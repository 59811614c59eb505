"""Acquisition checks on synthetic chests whose geometry the test sets, then through the outputs."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from acquisition_phantoms import chest
from pydicom import Dataset
from xiqa.operators.acquisition import AcquisitionConfig, CheckStatus, assess_acquisition
from xiqa.operators.acquisition.exposure import exposure_indices
from xiqa.operators.acquisition.sentences import (
    acquisition_sentences,
    split_acquisition_note,
    with_acquisition_note,
)
from xiqa.operators.gate import judge_frontal_chest

#: the synthetic chests set the geometry of dark lung fields; the learned lung-field network is
#: made for real plates and is tested on them (test_lung_fields.py)
SYNTHETIC = AcquisitionConfig(lung_finder="classical")


def _assess(image: np.ndarray, dataset=None, config: AcquisitionConfig = SYNTHETIC,
            source_shape=None):
    region = judge_frontal_chest(None, image).region
    return assess_acquisition(image, region, dataset, source_shape, config)


def test_a_well_positioned_chest_passes_every_check() -> None:
    result = _assess(chest())
    assert [c.status for c in result.checks] == [CheckStatus.PASS] * 5
    assert result.by_name("rotation").value == pytest.approx(0.0, abs=0.02)
    assert result.by_name("anatomy_cut_off").value > 0.1  # the apices lie ~11% of the side below the top
    assert result.failed == ()


def test_lung_fields_cut_by_the_top_border_fail_at_both_apices() -> None:
    result = _assess(chest(shift_y=-60))
    check = result.by_name("anatomy_cut_off")
    assert check.status is CheckStatus.FAIL
    assert check.value == 0.0
    assert check.findings["cut_off"] == ["right apex", "left apex"]
    assert check.findings["margins"]["right costophrenic angle"] > 0.2


def test_lung_fields_cut_by_the_bottom_border_fail_at_both_costophrenic_angles() -> None:
    check = _assess(chest(shift_y=60)).by_name("anatomy_cut_off")
    assert check.status is CheckStatus.FAIL
    assert check.findings["cut_off"] == ["right costophrenic angle", "left costophrenic angle"]


def test_a_collimator_shutter_is_the_edge_the_landmarks_are_held_to() -> None:
    open_field = _assess(chest(lung_height=96)).by_name("anatomy_cut_off")
    shuttered = _assess(chest(lung_height=96, shutter=40)).by_name("anatomy_cut_off")
    assert open_field.status is CheckStatus.PASS
    assert shuttered.status is CheckStatus.FAIL  # the shutter covers the apices and the angles
    assert shuttered.findings["field"][:2] == [40, 215]
    assert set(shuttered.findings["cut_off"]) >= {"right apex", "left apex"}


def test_a_mediastinum_shifted_to_the_image_right_is_rotation_towards_the_patients_left() -> None:
    check = _assess(chest(mediastinum_shift=20)).by_name("rotation")
    assert check.status is CheckStatus.FAIL
    # the mediastinum's band moves 20 pixels right: the image-right lung's medial edge with it,
    # the other lung's stays (the band no longer cuts it); about 0.13 of the 92-pixel half width
    assert check.value == pytest.approx(0.13, abs=0.02)
    assert check.findings["towards"] == "left"
    assert check.findings["lung_width_ratio"] < 0.8
    mirrored = _assess(chest(mediastinum_shift=-20)).by_name("rotation")
    assert mirrored.value == pytest.approx(-check.value, abs=0.02)
    assert mirrored.findings["towards"] == "right"


def test_a_small_shift_stays_under_the_rotation_threshold() -> None:
    check = _assess(chest(mediastinum_shift=6)).by_name("rotation")
    assert 0 < check.value < 0.10
    assert check.status is CheckStatus.PASS


def test_short_lung_fields_are_a_shallow_inspiration() -> None:
    deep, shallow = _assess(chest()), _assess(chest(lung_height=50))
    assert deep.by_name("inspiration").status is CheckStatus.PASS
    assert shallow.by_name("inspiration").status is CheckStatus.FAIL
    # height from apex to dome (about 2 x 50 px) over the thorax width (2 x (52 + 44) px)
    assert shallow.by_name("inspiration").value == pytest.approx(100 / 192, abs=0.04)


def test_inspiration_is_measured_in_the_sources_proportions() -> None:
    square = _assess(chest()).by_name("inspiration").value
    tall = _assess(chest(), source_shape=(1200, 1000)).by_name("inspiration").value
    assert tall == pytest.approx(square * 1.2, rel=1e-6)


def _indices(ei=None, target=None, deviation=None) -> Dataset:
    dataset = Dataset()
    if ei is not None:
        dataset.ExposureIndex = ei
    if target is not None:
        dataset.TargetExposureIndex = target
    if deviation is not None:
        dataset.DeviationIndex = deviation
    return dataset


def test_deviation_index_tag_inside_the_band_passes_and_outside_fails() -> None:
    inside = _assess(chest(), _indices(400, 400, 0.4)).by_name("exposure")
    outside = _assess(chest(), _indices(1000, 400, 4.0)).by_name("exposure")
    assert inside.status is CheckStatus.PASS and inside.value == pytest.approx(0.4)
    assert inside.unit == "DI" and inside.threshold == (-3.0, 3.0)
    assert outside.status is CheckStatus.FAIL and outside.findings["problems"] == ["deviation index"]


def test_deviation_index_is_computed_from_ei_and_its_target_when_not_sent() -> None:
    indices = exposure_indices(_indices(ei=800, target=400))
    assert indices["DeviationIndex"] == pytest.approx(10 * math.log10(2))
    assert indices["deviation_index_computed"] is True
    narrow = AcquisitionConfig(deviation_index_band=(-1.0, 1.0))
    check = _assess(chest(), _indices(ei=800, target=400), narrow).by_name("exposure")
    assert check.status is CheckStatus.FAIL  # DI 3.01 is outside [-1, 1]


def test_unreadable_exposure_tags_count_as_absent() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    dataset = _indices(target=400)
    dataset[Tag(0x0018, 0x1411)] = RawDataElement(Tag(0x0018, 0x1411), "DS", 3, b"n/a", 0, False, True)
    assert exposure_indices(dataset)["DeviationIndex"] is None


def test_a_clipped_lung_fails_exposure_with_the_clipped_share() -> None:
    check = _assess(chest(clip_lungs=0.3)).by_name("exposure")
    assert check.status is CheckStatus.FAIL
    assert check.unit == "fraction of lung area"
    assert 0.15 < check.value < 0.35  # the lower 30 % of the lungs' height, less than 30 % of their area
    assert _assess(chest()).by_name("exposure").value == 0.0


def test_a_field_far_larger_than_the_lungs_is_too_wide_collimation() -> None:
    wide = _assess(chest(lung_height=50, lung_width=36)).by_name("collimation")
    tight = _assess(chest(shutter=20)).by_name("collimation")
    assert wide.status is CheckStatus.FAIL and wide.value > 3.2
    assert tight.status is CheckStatus.PASS and tight.value < 2.2


def test_no_lung_fields_means_cannot_tell_not_pass() -> None:
    flat = np.full((256, 256), 0.5, np.float32)
    result = assess_acquisition(flat, None, None)
    assert {c.status for c in result.checks} == {CheckStatus.CANNOT_TELL}
    assert all(c.value is None and c.reason for c in result.checks)
    assert result.lungs_from == "none"


def test_verdict_effect_poor_turns_a_failed_check_into_a_poor_overall_verdict() -> None:
    failing = chest(shift_y=60)
    assert _assess(failing).overall_verdict("Good") == "Good"
    poor = replace(SYNTHETIC, verdict_effect="poor")
    assert _assess(failing, config=poor).overall_verdict("Good") == "Poor"
    assert _assess(chest(), config=poor).overall_verdict("Good") == "Good"


@pytest.mark.parametrize("changes, match", [
    ({"deviation_index_band": (2.0, 1.0)}, "deviation_index_band"),
    ({"verdict_effect": "ignore"}, "verdict_effect"),
    ({"max_field_ratio": 0.5}, "max_field_ratio"),
    ({"cut_off_margin": -0.1}, "cut_off_margin"),
])
def test_bad_thresholds_are_refused(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f'Argument "{match}"'):
        AcquisitionConfig(**changes)


def test_site_settings_are_read_by_their_site_keys_and_never_coerced() -> None:
    from xiqa.operators.acquisition.config import site_config

    assert site_config({}) == AcquisitionConfig()
    assert site_config({"acquisition_verdict_effect": "poor", "deviation_index_band": "-2,2.5",
                        "max_field_ratio": "4", "cut_off_margin": None}) == AcquisitionConfig(
        verdict_effect="poor", deviation_index_band=(-2.0, 2.5), max_field_ratio=4.0)
    for values, message in (({"max_field_ratio": True}, "max_field_ratio must be a number, got True"),
                            ({"deviation_index_band": [1, 2, 3]}, "deviation_index_band must be two numbers"),
                            ({"clip_level": 0.1}, "unknown acquisition setting 'clip_level'")):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            site_config(values)


def test_each_failure_gets_a_sentence_saying_what_to_correct() -> None:
    result = _assess(chest(shift_y=60, mediastinum_shift=20))
    sentences = acquisition_sentences(result)
    assert sentences[0] == ("Acquisition check: the right costophrenic angle and the left costophrenic angle "
                            "are cut off; lower the lower collimator edge and repeat.")
    assert sentences[1].startswith("Acquisition check: the patient is rotated (mediastinum 0.1")
    assert "towards the patient's left); square the shoulders to the detector and repeat." in sentences[1]
    assert acquisition_sentences(_assess(chest())) == []


def test_the_validator_holds_acquisition_sentences_to_the_results() -> None:
    result = _assess(chest(shift_y=-60))
    note = "One removable object was found. " + " ".join(acquisition_sentences(result))
    core, problems = split_acquisition_note(note, result)
    assert problems == [] and core == "One removable object was found."
    changed = note.replace("left apex", "left costophrenic angle")
    assert split_acquisition_note(changed, result)[1] == [
        "the sentences on acquisition checks are missing or changed"]
    invented = split_acquisition_note(note, _assess(chest()))[1]
    assert invented == ['mentions "Acquisition check" but no acquisition check failed']


def test_a_failed_check_narrows_accepted_as_it_is_to_foreign_objects() -> None:
    result = _assess(chest(shift_y=-60))
    untouched = "No foreign objects were found. The image can be accepted as it is."
    note = with_acquisition_note(untouched, result)
    assert "accepted as it is" not in note
    assert note.startswith("No foreign objects were found. As to foreign objects, the image can be accepted. "
                           "Acquisition check: ")
    assert split_acquisition_note(note, result) == (untouched, [])
    assert with_acquisition_note(untouched, _assess(chest())) == untouched
