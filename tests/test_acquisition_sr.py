"""The SR with acquisition checks: coded, valued, and still 0 errors in dciodvfy and PixelMed."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from acquisition_phantoms import chest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from test_sr_writer import SR_PIXELMED_WARNINGS
from writer_cases import (
    ALGORITHM,
    CASE_NAMES,
    WriterCase,
    dciodvfy,
    pixelmed,
    requires_dciodvfy,
    requires_pixelmed,
)
from xiqa.operators import codes as xc
from xiqa.operators.acquisition import AcquisitionConfig, assess_acquisition
from xiqa.operators.gate import judge_frontal_chest
from xiqa.operators.sr_writer import build_report


def _acquisition(verdict_effect: str = "report"):
    image = chest(shift_y=60, mediastinum_shift=20)
    tags = Dataset()
    tags.ExposureIndex, tags.TargetExposureIndex, tags.DeviationIndex = 1000, 400, 3.98
    region = judge_frontal_chest(None, image).region
    # the synthetic chest sets the geometry of dark lung fields (see test_acquisition.SYNTHETIC)
    config = AcquisitionConfig(verdict_effect=verdict_effect, lung_finder="classical")
    return assess_acquisition(image, region, tags, config=config)


@pytest.fixture(scope="module")
def acquisition_sr(cases: dict[str, WriterCase],
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    case = cases[CASE_NAMES[0]]
    seg = dcmread(case.paths["seg"])
    paths = []
    for effect in ("report", "poor"):
        sr = build_report(case.source, case.quality, seg, case.summary, "template", ALGORITHM,
                          grid_mask=case.grid_mask, acquisition=_acquisition(effect))
        path = tmp_path_factory.mktemp(f"acquisition_sr_{effect}") / "sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        paths.append(path)
    return tuple(paths)


def _image_group(path: Path):
    report = hd.sr.srread(path).content
    return report.get_planar_roi_measurement_groups()[0]


def test_each_check_is_a_coded_evaluation_in_the_image_group(acquisition_sr) -> None:
    group = _image_group(acquisition_sr[0])
    evaluations = {item.name: item.value for item in group.get_qualitative_evaluations()}
    assert evaluations[xc.CUT_OFF] == codes.SCT.Yes
    assert evaluations[xc.ROTATED] == codes.SCT.Yes
    assert evaluations[xc.SHALLOW_INSPIRATION] == codes.SCT.No
    assert evaluations[xc.EXPOSURE_OUT_OF_RANGE] == codes.SCT.Yes  # DI 3.98 outside [-3, 3]
    assert evaluations[xc.COLLIMATION_TOO_WIDE] == codes.SCT.No
    assert xc.VERDICT_WITH_ACQUISITION not in evaluations  # only under verdict effect "poor"


def test_measured_values_and_iec_indices_are_numbers_of_the_image_group(acquisition_sr) -> None:
    values = {m.name: m.value for m in _image_group(acquisition_sr[0]).get_measurements()}
    assert values[xc.LUNG_MARGIN] == 0.0
    assert values[xc.MEDIASTINUM_OFFSET] == pytest.approx(0.13, abs=0.03)
    assert values[codes.DCM.ExposureIndex] == 1000
    assert values[codes.DCM.TargetExposureIndex] == 400
    assert values[codes.DCM.DeviationIndex] == pytest.approx(3.98)
    group = dcmread(acquisition_sr[0]).ContentSequence[-2].ContentSequence[0]
    texts = [item.TextValue for item in group.ContentSequence
             if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "XQ-0082"]
    assert texts == ["right costophrenic angle, left costophrenic angle"]


def test_verdict_effect_poor_records_the_verdict_with_acquisition_checks(acquisition_sr) -> None:
    group = _image_group(acquisition_sr[1])
    evaluations = {item.name: item.value for item in group.get_qualitative_evaluations()}
    assert evaluations[xc.VERDICT_WITH_ACQUISITION] == xc.VERDICT_POOR


@requires_dciodvfy
def test_dciodvfy_finds_no_error_with_acquisition_checks(acquisition_sr) -> None:
    for path in acquisition_sr:
        report = dciodvfy(path)
        assert report.errors == [], report.text


@requires_pixelmed
def test_pixelmed_finds_no_error_with_acquisition_checks(acquisition_sr) -> None:
    import re

    allowed = (*SR_PIXELMED_WARNINGS, r'NUM \(11384[567],DCM,"[^"]+"\): Content Item not in template$')
    for report in pixelmed(list(acquisition_sr)).values():
        assert report.errors == [], report.text
        unexpected = [w for w in report.warnings if not any(re.search(a, w) for a in allowed)]
        assert unexpected == [], report.text
