"""Q_img scoring against hand-computed cases (DESIGN.md defaults: k=70, tau=0.1, 0.3/0.7 weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from xiqa.operators.scoring import (
    ScoringConfig,
    Verdict,
    counted_at_source,
    find_objects,
    score_mask,
    size_penalty,
    verdict_for,
)


def _pen(area_fraction: float) -> float:
    return 1 / (1 + math.exp(-70 * (area_fraction - 0.1)))


def test_no_object_gives_perfect_quality_and_good_verdict():
    result = score_mask(np.zeros((256, 256), np.uint8))
    assert result.q_img == 1.0
    assert result.q_filtered == 1.0
    assert result.verdict is Verdict.GOOD
    assert result.objects == ()


def test_one_central_object_has_location_weight_one():
    mask = np.zeros((256, 256), np.uint8)
    mask[120:136, 120:136] = 1  # 256 px, centroid exactly at the centre
    result = score_mask(mask)
    (finding,) = result.objects
    assert finding.area_pixels == 256
    assert finding.area_fraction == pytest.approx(256 / 65536)
    assert (finding.centroid_y, finding.centroid_x) == (0.5, 0.5)
    assert finding.location_weight == 1.0
    expected_severity = 0.3 * 1.0 + 0.7 * _pen(256 / 65536)
    assert finding.severity == pytest.approx(expected_severity, abs=1e-12)
    assert result.q_img == pytest.approx(1 - expected_severity, abs=1e-12)
    # 0.3 + 0.7 * 0.0012 = 0.3008 -> Q = 0.6992 -> Acceptable
    assert result.verdict is Verdict.ACCEPTABLE


def test_peripheral_object_uses_distance_to_centre():
    mask = np.zeros((256, 256), np.uint8)
    mask[0:4, 0:4] = 1  # centroid (2, 2): outside the central region
    (finding,) = score_mask(mask).objects
    distance = math.hypot(2 - 128, 2 - 128)
    half_diagonal = math.hypot(256, 256) / 2
    assert finding.location_weight == pytest.approx(1 - distance / half_diagonal, abs=1e-12)
    assert finding.location_weight == pytest.approx(2 * math.sqrt(2) / (128 * math.sqrt(2)), abs=1e-12)


def test_central_region_boundary_is_inclusive_at_15_percent():
    mask = np.zeros((100, 100), np.uint8)
    mask[14:16, 50] = 1  # centroid y = 15.0 + 0 -> exactly 0.15 H with pixel centres (14.5+15.5)/2
    (finding,) = score_mask(mask).objects
    assert finding.centroid_y == pytest.approx(0.15)
    assert finding.location_weight == 1.0
    mask[:] = 0
    mask[13:15, 50] = 1  # centroid y = 14.0 -> outside
    (finding,) = score_mask(mask).objects
    assert finding.location_weight < 1.0


def test_several_objects_multiply():
    mask = np.zeros((256, 256), np.uint8)
    mask[120:136, 120:136] = 1
    mask[0:4, 0:4] = 1
    mask[250:256, 200:206] = 1
    result = score_mask(mask)
    assert len(result.objects) == 3
    expected = np.prod([1 - f.severity for f in result.objects])
    assert result.q_img == pytest.approx(expected, abs=1e-12)
    assert result.q_img < min(1 - f.severity for f in result.objects)


def test_large_object_saturates_size_penalty():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 1  # 36 % of the image
    (finding,) = score_mask(mask).objects
    assert finding.size_penalty == pytest.approx(_pen(0.36))
    assert finding.severity == pytest.approx(0.3 + 0.7 * _pen(0.36), abs=1e-12)
    assert score_mask(mask).q_img == pytest.approx(0.0, abs=1e-6)


def test_severity_is_clipped_to_one_when_weights_sum_above_one():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 1
    config = ScoringConfig(location_weight=0.6, size_weight=0.7)
    (finding,) = score_mask(mask, config=config).objects
    assert finding.severity == 1.0


@pytest.mark.parametrize(("fraction", "expected"), [(0.1, 0.5), (0.0, 1 / (1 + math.exp(7))),
                                                     (0.2, 1 / (1 + math.exp(-7)))])
def test_size_penalty_is_logistic_in_k_and_tau(fraction, expected):
    assert size_penalty(fraction) == pytest.approx(expected, abs=1e-12)


def test_size_penalty_follows_configured_k_and_tau():
    config = ScoringConfig(size_steepness=10, size_threshold=0.3)
    assert size_penalty(0.3, config) == pytest.approx(0.5)
    assert size_penalty(0.4, config) == pytest.approx(1 / (1 + math.exp(-1)))


def test_saliency_filter_drops_objects_at_or_below_threshold():
    mask = np.zeros((256, 256), np.uint8)
    mask[120:136, 120:136] = 1
    mask[0:4, 0:4] = 1
    saliency = np.zeros((256, 256), np.float64)  # float64 so that 0.30 is exactly the threshold
    saliency[120:136, 120:136] = 0.9
    saliency[0:4, 0:4] = 0.30  # not above the 0.30 threshold
    result = score_mask(mask, saliency)
    central = next(f for f in result.objects if f.location_weight == 1.0)
    assert central.mean_saliency == pytest.approx(0.9)
    assert result.q_filtered == pytest.approx(1 - central.severity, abs=1e-12)
    assert result.q_img < result.q_filtered


def test_diagonal_pixels_form_one_object_under_8_connectivity():
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = 1
    assert len(find_objects(mask)) == 1
    mask[6, 8] = 1  # not touching
    assert len(find_objects(mask)) == 2


@pytest.mark.parametrize(("quality", "verdict"), [(0.81, Verdict.GOOD), (0.8, Verdict.ACCEPTABLE),
                                                  (0.51, Verdict.ACCEPTABLE), (0.5, Verdict.POOR)])
def test_verdict_thresholds_are_strict(quality, verdict):
    assert verdict_for(quality) is verdict


def test_mismatched_saliency_shape_is_rejected_with_argument_name():
    with pytest.raises(ValueError, match='"saliency"'):
        score_mask(np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.float32))


def test_a_broken_lead_counts_once_and_keeps_its_raw_components():
    mask = np.zeros((256, 256), np.uint8)
    for start in range(40, 200, 20):  # a dashed line: 8 pieces 3 pixels apart
        mask[128, start:start + 17] = 1
    raw = score_mask(mask, config=ScoringConfig(merge_radius=0))
    merged = score_mask(mask)
    assert len(raw.objects) == raw.raw_component_count == 8
    assert len(merged.objects) == 1 and merged.raw_component_count == 8
    (lead,) = merged.objects
    assert lead.fragments == 8
    assert lead.area_pixels == int(mask.sum())  # the closing joins pieces but adds no area
    assert merged.q_img > raw.q_img


def _object_and_corner_marker() -> tuple[np.ndarray, np.ndarray]:
    """A mask with one object over the chest region and one marker in the corner, and the region."""
    mask = np.zeros((256, 256), np.uint8)
    mask[100:110, 100:110] = 1  # over the chest
    mask[5:15, 230:245] = 1  # a marker in the corner
    region = np.zeros((256, 256), bool)
    region[40:220, 40:220] = True
    return mask, region


def test_objects_outside_the_chest_region_are_listed_apart_and_do_not_count():
    mask, region = _object_and_corner_marker()
    result = score_mask(mask, region=region)
    assert [f.bbox for f in result.objects] == [(100, 100, 110, 110)]
    assert [f.bbox for f in result.objects_outside] == [(5, 230, 15, 245)]
    assert result.objects_outside[0].inside_fraction == 0.0
    assert result.q_img == pytest.approx(1 - result.objects[0].severity)
    assert tuple(result.to_dict()["objects_outside_chest"][0]["bbox"]) == (5, 230, 15, 245)
    assert result.region_used and not score_mask(mask).region_used


def test_the_source_mask_keeps_only_the_counted_objects():
    mask, region = _object_and_corner_marker()
    source_mask = np.kron(mask, np.ones((8, 8), np.uint8))  # a 2,048 px source
    source_mask[99 * 8 : 99 * 8 + 4, 100 * 8 : 110 * 8] = 1  # interpolation reaching past the grid pixels
    kept = counted_at_source(source_mask, score_mask(mask, region=region))
    assert kept.shape == source_mask.shape and kept.dtype == source_mask.dtype
    assert kept[40:120].sum() == 0  # the marker is gone
    assert kept[800:880, 800:880].all() and kept[99 * 8 : 99 * 8 + 4, 800:880].all()
    assert kept.sum() == source_mask.sum() - 80 * 120
    assert counted_at_source(source_mask, score_mask(mask)).sum() == source_mask.sum()  # no region: all count


def test_an_object_mostly_outside_counts_when_enough_of_it_is_over_the_chest():
    mask = np.zeros((256, 256), np.uint8)
    mask[100, 10:110] = 1  # a lead that enters the chest region for 30 of its 100 pixels
    region = np.zeros((256, 256), bool)
    region[:, 80:] = True
    assert len(score_mask(mask, region=region).objects) == 1
    assert len(score_mask(mask, config=ScoringConfig(min_inside_fraction=0.5), region=region).objects) == 0


def test_mismatched_region_shape_is_rejected_with_argument_name():
    with pytest.raises(ValueError, match='"region"'):
        score_mask(np.zeros((8, 8), np.uint8), region=np.zeros((4, 4), bool))
