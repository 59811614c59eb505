"""DICOM outputs of classed objects: a SEG segment per class, the class (and the finer category where
one was named) per object in the SR, both quality figures and verdicts; dciodvfy and PixelMed find no
error."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from test_sr_writer import SR_PIXELMED_WARNINGS
from writer_cases import (
    ALGORITHM,
    WriterCase,
    dciodvfy,
    pixelmed,
    pixelmed_errors,
    requires_dciodvfy,
    requires_pixelmed,
    with_classes,
)
from xiqa.operators import codes as xc
from xiqa.operators.output_writer import write_outputs
from xiqa.operators.scoring import QualityResult

#: the finer categories of the first objects: a standard code pydicom lacks (SCT 17102003), a
#: private one (XQ-0061) on an expected ECG lead; the classifier named none for the others
CATEGORIES = ("nasogastric_tube", "ecg_lead_wire")


def _classed(quality: QualityResult) -> QualityResult:
    """The first object a medical device (a nasogastric tube), the others removable (an expected
    ECG lead, then objects whose category the classifier did not name)."""
    count = len(quality.objects)
    assert count >= 3
    classed = with_classes(quality, ["device"] + ["removable"] * (count - 1),
                           [*CATEGORIES, *[None] * (count - len(CATEGORIES))], [i == 1 for i in range(count)])
    return dataclasses.replace(classed, ecg_rule="ECG leads expected: View Position AP (bedside plate)")


@pytest.fixture(scope="module")
def classed(cases: dict[str, WriterCase], tmp_path_factory) -> tuple[WriterCase, QualityResult, dict]:
    case = next(c for c in cases.values() if len(c.quality.objects) >= 3)
    quality = _classed(case.quality)
    folder = tmp_path_factory.mktemp("classed")
    probability = case.grid_mask.astype(np.float32)
    paths = write_outputs(case.source, probability, np.zeros_like(probability), quality,
                          "A note.", "template", ALGORITHM, folder)
    return case, quality, paths


def test_the_seg_has_a_segment_per_class_holding_that_class_objects(classed) -> None:
    case, quality, paths = classed
    seg = dcmread(paths["seg"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Removable object", "Medical device"]
    frames = seg.pixel_array.reshape(2, *case.source.shape)
    assert frames[0].any() and frames[1].any()
    assert not (frames[0] & frames[1]).any()  # the device is not in the removable segment


def test_the_sr_codes_each_object_class_and_both_quality_figures_and_verdicts(classed) -> None:
    _, quality, paths = classed
    content = hd.sr.srread(paths["sr"]).content
    image, *objects = content.get_planar_roi_measurement_groups()
    assert image.get_measurements(name=xc.Q_IMG)[0].value == quality.q_img
    assert image.get_measurements(name=xc.Q_REMOVABLE)[0].value == quality.q_removable
    (verdict,) = image.get_qualitative_evaluations(name=xc.VERDICT)
    (removable_verdict,) = image.get_qualitative_evaluations(name=xc.VERDICT_REMOVABLE)
    (basis,) = image.get_qualitative_evaluations(name=xc.VERDICT_BASIS)
    assert verdict.value.value == xc.VERDICT_CODES[quality.verdict].value
    assert removable_verdict.value.value == xc.VERDICT_CODES[quality.verdict_removable].value
    assert basis.value.value == xc.REMOVABLE_OBJECT.value
    classes = [group.get_qualitative_evaluations(name=xc.OBJECT_CLASS)[0].value.value for group in objects]
    assert classes == [xc.OBJECT_CLASS_CODES[f.object_class].value for f in quality.objects]
    assert [len(group.get_qualitative_evaluations(name=xc.EXPECTED_ON_PLATE)) for group in objects] == \
        [int(f.expected) for f in quality.objects]
    confidences = [group.get_measurements(name=xc.CLASS_CONFIDENCE)[0].value for group in objects]
    assert confidences == [f.class_confidence for f in quality.objects]


def test_the_sr_codes_the_finer_category_only_where_one_was_named(classed) -> None:
    _, quality, paths = classed
    content = hd.sr.srread(paths["sr"]).content
    _, *objects = content.get_planar_roi_measurement_groups()
    coded = [[(e.value.scheme_designator, e.value.value, e.value.meaning)
              for e in group.get_qualitative_evaluations(name=xc.OBJECT_CATEGORY)] for group in objects]
    assert coded[:2] == [[("SCT", "17102003", "Nasogastric tube")], [("99XIQA", "XQ-0061", "ECG lead wire")]]
    assert coded[2:] == [[] for _ in quality.objects[2:]]  # unnamed: no category item


def test_the_sr_gives_a_named_category_its_confidence_in_the_object_group(classed) -> None:
    _, quality, paths = classed
    content = hd.sr.srread(paths["sr"]).content
    _, *objects = content.get_planar_roi_measurement_groups()
    confidences = [[(m.value, m.unit.value) for m in group.get_measurements(name=xc.CATEGORY_CONFIDENCE)]
                   for group in objects]
    assert confidences == [[] if f.category is None else [(f.category_confidence, "1")]
                           for f in quality.objects]
    assert confidences[0] == [(0.93, "1")]


@requires_dciodvfy
def test_dciodvfy_finds_no_error_in_the_classed_seg_and_sr(classed) -> None:
    _, _, paths = classed
    for kind in ("seg", "sr"):
        report = dciodvfy(paths[kind])
        assert report.errors == [], report.text


@requires_pixelmed
def test_pixelmed_finds_no_error_in_the_classed_seg_and_sr(classed) -> None:
    _, _, paths = classed
    reports = pixelmed([Path(paths["seg"]), Path(paths["sr"])])
    seg_report = reports[Path(paths["seg"])]
    assert pixelmed_errors(seg_report, dcmread(paths["seg"], stop_before_pixels=True)) == [], seg_report.text
    sr_report = reports[Path(paths["sr"])]
    assert "Found Root Template TID_1500 (MeasurementReport)" in sr_report.text, sr_report.text
    assert sr_report.errors == [], sr_report.text
    unexpected = [w for w in sr_report.warnings if not any(re.search(a, w) for a in SR_PIXELMED_WARNINGS)]
    assert unexpected == [], sr_report.text
