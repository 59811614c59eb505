"""TID 1500 SR: valid for every variant and quirk, renders with dsrdump, round-trips Q_img."""

from __future__ import annotations

import json
import re
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from writer_cases import (
    ALGORITHM,
    CASE_NAMES,
    DSRDUMP,
    ToolReport,
    WriterCase,
    dciodvfy,
    pixelmed,
    requires_dciodvfy,
    requires_dsrdump,
    requires_pixelmed,
    write_not_scored_study,
)
from xiqa.operators import codes as xc
from xiqa.operators.seg_writer import build_segmentation
from xiqa.operators.sr_writer import SummarySource, build_report, object_outlines


def _report(case: WriterCase) -> hd.sr.MeasurementReport:
    return hd.sr.srread(case.paths["sr"]).content


@requires_dciodvfy
@pytest.mark.parametrize("name", CASE_NAMES)
def test_dciodvfy_finds_no_error(cases: dict[str, WriterCase], name: str) -> None:
    report = dciodvfy(cases[name].paths["sr"])
    assert "ComprehensiveSR" in report.text, report.text
    assert report.errors == [], report.text
    # warnings allowed: dciodvfy does not know our private coding scheme, and a source
    # without Study ID / Study Time gives outputs without them (Type 2, empty)
    allowed = ("<99XIQA>", "would be needed to build DICOMDIR")
    if name == "name_without_caret":  # a family name alone is valid PN, dciodvfy doubts it
        allowed += ("Retired Person Name form",)
    assert all(any(a in warning for a in allowed) for warning in report.warnings), report.warnings


#: PixelMed warnings an SR may have: its TID 1410 predates the TID 4019 algorithm rows and the
#: finding category in it, it cannot know our private concepts, and highdicom writes the
#: meaning of (121233, DCM) capitalised ("Source Image for Segmentation").
SR_PIXELMED_WARNINGS = (
    r'(TEXT \(11100[123],DCM,"Algorithm (Name|Version|Parameters)"\)|CODE \(276214006,SCT,'
    r'"Finding category"\)|(CODE|TEXT) \(XQ-\d{4},99XIQA,"[^"]+"\)): Content Item not in template$',
    r'IMAGE \(121233,DCM,"Source Image for Segmentation"\): Code \(121233,DCM,"Source Image for '
    r'Segmentation"\) has different code meaning',
    r"SpecificCharacterSet/value\[1\]: Unrecognized defined term :ISO_IR 192:$",
    r'TEXT \(XQ-0042,99XIQA,"Reason not scored"\): Content Item not in template$',
)


@requires_pixelmed
@pytest.mark.parametrize("name", CASE_NAMES)
def test_pixelmed_finds_no_error_in_template_or_iod(cases: dict[str, WriterCase],
                                                    pixelmed_reports: dict[Path, ToolReport],
                                                    name: str) -> None:
    report = pixelmed_reports[cases[name].paths["sr"]]
    assert "Found ComprehensiveSR IOD" in report.text, report.text
    assert "Found Root Template TID_1500 (MeasurementReport)" in report.text, report.text
    assert report.errors == [], report.text
    unexpected = [w for w in report.warnings
                  if not any(re.search(allowed, w) for allowed in SR_PIXELMED_WARNINGS)]
    assert unexpected == [], report.text


@requires_dsrdump
@pytest.mark.parametrize("name", CASE_NAMES)
def test_dsrdump_renders_q_img(cases: dict[str, WriterCase], name: str) -> None:
    case = cases[name]
    result = subprocess.run([DSRDUMP, "-Ec", str(case.paths["sr"])], capture_output=True,
                            text=True, errors="replace", timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "Imaging Measurement Report" in result.stdout
    group = _report(case).get_planar_roi_measurement_groups()[0]
    item = group.get_measurements(name=xc.Q_IMG)[0]
    shown = str(item[0].MeasuredValueSequence[0].NumericValue)
    assert f'"Image quality score Q_img")="{shown}"' in result.stdout
    assert float(shown) == pytest.approx(case.quality.q_img, abs=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_q_img_round_trips_exactly(cases: dict[str, WriterCase], name: str) -> None:
    case = cases[name]
    # what report.json holds, through JSON and back
    expected = json.loads(json.dumps(case.quality.to_dict()))
    group = _report(case).get_planar_roi_measurement_groups()[0]
    assert group.get_measurements(name=xc.Q_IMG)[0].value == expected["q_img"]
    assert group.get_measurements(name=xc.Q_FILTERED)[0].value == expected["q_filtered"]
    assert group.get_measurements(name=xc.OBJECT_COUNT)[0].value == len(expected["objects"])
    verdict = group.get_qualitative_evaluations(name=xc.VERDICT)[0].value
    assert verdict.value == xc.VERDICT_CODES[case.quality.verdict].value


@pytest.mark.parametrize("name", CASE_NAMES)
def test_image_group_on_the_whole_image_then_one_group_per_object(cases: dict[str, WriterCase],
                                                                   name: str) -> None:
    case = cases[name]
    groups = _report(case).get_planar_roi_measurement_groups()
    assert len(groups) == 1 + len(case.quality.objects)
    image_group, object_groups = groups[0], groups[1:]
    assert image_group.reference_type == codes.DCM.ImageRegion
    assert str(image_group.tracking_identifier) == "xiqa image quality"
    rows, columns = case.source.shape
    outline = np.asarray(image_group.roi.GraphicData, np.float64).reshape(-1, 2)
    assert outline.tolist() == [[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]]
    region_source = image_group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert region_source.ReferencedSOPInstanceUID == case.source.sop_instance_uid
    total = image_group.get_measurements(name=xc.TOTAL_AREA_FRACTION)[0].value
    assert total == pytest.approx(sum(f.area_fraction for f in case.quality.objects), abs=1e-12)
    for group, finding in zip(object_groups, case.quality.objects, strict=True):
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values[xc.AREA_FRACTION.value] == finding.area_fraction
        assert values[xc.LOCATION_WEIGHT.value] == finding.location_weight
        assert values[xc.SIZE_PENALTY.value] == finding.size_penalty
        assert values[xc.SEVERITY.value] == finding.severity
        assert values[codes.DCM.Saliency.value] == finding.mean_saliency
        region = group.roi
        assert region.GraphicType == "POLYLINE"
        points = np.asarray(region.GraphicData, np.float64).reshape(-1, 2)
        assert (points[0] == points[-1]).all() and len(points) >= 4
        rows, columns = case.source.shape
        assert points[:, 0].max() <= columns and points[:, 1].max() <= rows and points.min() >= 0


def test_summary_codes_and_references(cases: dict[str, WriterCase]) -> None:
    case = cases["dx_m2_14bit_j2k_window"]
    sr, source = dcmread(case.paths["sr"]), case.source.dataset
    assert sr.StudyInstanceUID == source.StudyInstanceUID and int(sr.SeriesNumber) == 9103
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    scheme = sr.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99XIQA"
    evidence = {str(instance.ReferencedSOPInstanceUID)
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for instance in series.ReferencedSOPSequence}
    assert evidence == {str(source.SOPInstanceUID), str(dcmread(case.paths["seg"]).SOPInstanceUID)}
    root = sr.ContentSequence
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in root]
    assert names.index(codes.DCM.ImageLibrary.value) < names.index(
        codes.DCM.ImagingMeasurements.value)
    evaluations = root[names.index(xc.QUALITATIVE_EVALUATIONS.value)].ContentSequence
    assert evaluations[0].TextValue == case.summary
    assert evaluations[1].ConceptCodeSequence[0].CodeValue == xc.SUMMARY_FROM_TEMPLATE.value
    group = _report(case).get_planar_roi_measurement_groups()[0][0]
    texts = [item.TextValue for item in group.ContentSequence if item.ValueType == "TEXT"]
    assert ALGORITHM.name in texts and ALGORITHM.version in texts
    assert f"model_id={ALGORITHM.model_id}" in texts


def test_empty_image_reports_good_quality(cases: dict[str, WriterCase]) -> None:
    case = cases["no_objects"]
    groups = _report(case).get_planar_roi_measurement_groups()
    assert len(groups) == 1  # the whole-image group only
    group = groups[0]
    assert group.get_measurements(name=xc.Q_IMG)[0].value == 1.0
    assert group.get_qualitative_evaluations(name=xc.VERDICT)[0].value.value == \
        xc.VERDICT_GOOD.value


def test_outlines_without_grid_mask_are_boxes(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m2_10bit_implicit_none"]
    boxes = object_outlines(case.quality, None, case.source.shape)
    exact = object_outlines(case.quality, case.grid_mask, case.source.shape)
    assert len(boxes) == len(exact) == len(case.quality.objects)
    for box in boxes:
        assert box.shape == (5, 2)
    with pytest.raises(ValueError, match=r'Argument "grid_mask" must have the grid shape'):
        object_outlines(case.quality, np.zeros((10, 10)), case.source.shape)


def test_llm_summary_and_bytes_round_trip(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_15bit_jpegls_window_rescaled"]
    seg = build_segmentation(case.source, case.mask, ALGORITHM)
    sr = build_report(case.source, case.quality, seg, "  Ein Objekt gefunden: Münze.\n", "llm",
                      ALGORITHM, grid_mask=case.grid_mask)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    again = dcmread(BytesIO(buffer.getvalue()))
    evaluations = again.ContentSequence[-1].ContentSequence
    assert evaluations[0].TextValue == "Ein Objekt gefunden: Münze."
    assert evaluations[1].ConceptCodeSequence[0].CodeValue == xc.SUMMARY_FROM_LLM.value
    assert again.SOPInstanceUID == dcmread(case.paths["sr"]).SOPInstanceUID
    assert SummarySource("llm").code == xc.SUMMARY_FROM_LLM


def test_estimated_chest_region_is_coded_with_its_reason_in_the_image_group(
        cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_15bit_jpegls_window_rescaled"]
    seg = build_segmentation(case.source, case.mask, ALGORITHM)
    reason = "found 1 lung field(s), a frontal chest shows 2"
    sr = build_report(case.source, case.quality, seg, "Keine Objekte.", "template", ALGORITHM,
                      grid_mask=case.grid_mask, region_estimated_because=reason)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    content = hd.sr.srread(BytesIO(buffer.getvalue())).content
    image_group = content.get_planar_roi_measurement_groups()[0]
    (gate,) = image_group.get_qualitative_evaluations(name=xc.INPUT_GATE)
    assert gate.value.value == xc.CHEST_REGION_ESTIMATED.value
    reasons = [item.TextValue for item in image_group[0].ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == xc.CHEST_REGION_ESTIMATION_REASON.value]
    assert reasons == [reason]
    # a region that was found is not mentioned
    found = _report(case).get_planar_roi_measurement_groups()[0]
    assert found.get_qualitative_evaluations(name=xc.INPUT_GATE) == []


def test_rejects_bad_arguments(cases: dict[str, WriterCase]) -> None:
    case, other = cases["cr_m2_10bit_implicit_none"], cases["sc_m2_8bit_explicit_none"]
    seg = dcmread(case.paths["seg"])
    with pytest.raises(ValueError, match=r'Argument "summary_source" must be one of'):
        build_report(case.source, case.quality, seg, "text", "gpt", ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "summary" must not be empty'):
        build_report(case.source, case.quality, seg, " \x00 ", "template", ALGORITHM)
    with pytest.raises(TypeError, match=r'Argument "summary" must be a str'):
        build_report(case.source, case.quality, seg, None, "template", ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "seg" must'):
        build_report(case.source, case.quality, dcmread(other.paths["seg"]), "text", "template",
                     ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "seg" must be a Segmentation'):
        build_report(case.source, case.quality, dcmread(case.paths["sc"]), "text", "template",
                     ALGORITHM)


@requires_dciodvfy
@requires_pixelmed
def test_not_scored_report_is_one_whole_image_group_with_the_gate_code_and_reason(
        tmp_path: Path) -> None:
    """The WG04 ankle: OHIF needs a SCOORD in every group, PixelMed and dciodvfy find no error."""
    study = write_not_scored_study(tmp_path)
    assert dciodvfy(study.sr).errors == []
    report = pixelmed([study.sr])[study.sr]
    assert "Found Root Template TID_1500 (MeasurementReport)" in report.text, report.text
    assert report.errors == [], report.text
    unexpected = [w for w in report.warnings
                  if not any(re.search(allowed, w) for allowed in SR_PIXELMED_WARNINGS)]
    assert unexpected == [], report.text
    content = hd.sr.srread(study.sr).content
    (group,) = content.get_planar_roi_measurement_groups()
    assert content.get_image_measurement_groups() == []
    assert str(group.tracking_identifier) == "xiqa input gate"
    source = dcmread(study.source)
    outline = np.asarray(group.roi.GraphicData, np.float64).reshape(-1, 2).tolist()
    assert outline == [[0, 0], [source.Columns, 0], [source.Columns, source.Rows],
                       [0, source.Rows], [0, 0]]
    (gate,) = group.get_qualitative_evaluations(name=xc.INPUT_GATE)
    assert gate.value.value == xc.NOT_FRONTAL_CHEST.value
    assert group.get_measurements() == []
    reasons = [item.TextValue for item in group[0].ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == xc.NOT_SCORED_REASON.value]
    assert reasons == [study.reason] and study.reason.startswith("not a frontal chest radiograph: ")
