"""SEG writer: valid for every source variant and quirk, exact mask round trip, clear errors."""

from __future__ import annotations

import copy
import dataclasses
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from writer_cases import (
    ALGORITHM,
    CASE_NAMES,
    PLANTED_IDENTITY,
    ToolReport,
    WriterCase,
    dciodvfy,
    pixelmed_errors,
    requires_dciodvfy,
    requires_pixelmed,
)
from xiqa.operators.seg_writer import ALIGNED_ORIENTATION, build_segmentation, check_source_mask
from xiqa.operators.writer_common import AlgorithmInfo, reference_dataset
from xiqa.training.datasets import read_seg_mask


@requires_dciodvfy
@pytest.mark.parametrize("name", CASE_NAMES)
def test_dciodvfy_finds_no_error(cases: dict[str, WriterCase], name: str) -> None:
    report = dciodvfy(cases[name].paths["seg"])
    assert "Segmentation" in report.text, report.text
    assert report.errors == [], report.text


@requires_pixelmed
@pytest.mark.parametrize("name", CASE_NAMES)
def test_pixelmed_finds_no_error_beyond_its_known_defects(
        cases: dict[str, WriterCase], pixelmed_reports: dict[Path, ToolReport], name: str) -> None:
    path = cases[name].paths["seg"]
    report = pixelmed_reports[path]
    assert "Found Segmentation IOD" in report.text, report.text
    assert pixelmed_errors(report, dcmread(path, stop_before_pixels=True)) == [], report.text
    # the one warning: this PixelMed does not know the UTF-8 character set
    assert all("Unrecognized defined term :ISO_IR 192:" in w for w in report.warnings), report.text


@pytest.mark.parametrize("name", CASE_NAMES)
def test_mask_round_trips_at_source_resolution(cases: dict[str, WriterCase], name: str) -> None:
    case = cases[name]
    seg = dcmread(case.paths["seg"])  # pydicom: highdicom's segread wants a Slice Thickness
    assert (int(seg.Rows), int(seg.Columns)) == case.source.shape
    assert int(seg.NumberOfFrames) == 2  # one per object class; the case's objects are not classed
    frames = seg.PerFrameFunctionalGroupsSequence
    assert [frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber for frame in frames] == [1, 2]
    source = frames[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == case.source.sop_instance_uid
    pixels = seg.pixel_array.reshape(2, *case.source.shape)
    np.testing.assert_array_equal(pixels[0], case.mask)
    assert not pixels[1].any()
    assert read_seg_mask([case.paths["seg"]], case.source.sop_instance_uid,
                         case.source.shape).astype(bool).tolist() == case.mask.tolist()


@pytest.mark.parametrize("name", ["cr_m1_12bit_explicit_window", "zero_spacing",
                                  "no_spacing_no_orientation"])
def test_geometry_a_viewer_needs_follows_the_source(cases: dict[str, WriterCase],
                                                    name: str) -> None:
    case = cases[name]
    shared = dcmread(case.paths["seg"]).SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        list(ALIGNED_ORIENTATION)
    measures = shared.PixelMeasuresSequence[0]
    assert "SliceThickness" not in measures and "FrameOfReferenceUID" not in dcmread(
        case.paths["seg"])
    spacing = case.source.dataset.get("PixelSpacing")
    if name == "cr_m1_12bit_explicit_window":
        assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in spacing]
    else:  # zero or no spacing in the source: none in the SEG
        assert "PixelSpacing" not in measures


def test_source_orientation_is_kept_when_it_has_one(cases: dict[str, WriterCase]) -> None:
    case = cases["dx_m2_14bit_j2k_window"]
    dataset = case.source.dataset.copy()
    dataset.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    seg = build_segmentation(dataclasses.replace(case.source, dataset=dataset), case.mask, ALGORITHM)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]


def test_empty_mask_still_gives_one_frame_per_class(cases: dict[str, WriterCase]) -> None:
    case = cases["no_objects"]
    assert not case.mask.any() and case.quality.objects == ()
    seg = dcmread(case.paths["seg"])
    assert int(seg.NumberOfFrames) == 2 and len(seg.SegmentSequence) == 2
    assert not seg.pixel_array.any()


def test_removable_objects_and_medical_devices_are_two_segments_with_their_codes(
        cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_12bit_explicit_window"]
    rows, columns = case.source.shape
    removable = np.zeros((rows, columns), bool)
    removable[10:20, 10:30] = True
    devices = np.zeros((rows, columns), bool)
    devices[rows // 2:rows // 2 + 5, 5:columns - 5] = True
    seg = build_segmentation(case.source, removable, ALGORITHM, device_mask=devices)
    labels = [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence]
    assert labels == [(1, "Removable object"), (2, "Medical device")]
    types = [(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) for s in seg.SegmentSequence]
    assert types == [(codes.SCT.PhysicalObject.value, codes.SCT.ForeignBody.value, "SCT"),
                     (codes.SCT.PhysicalObject.value, "XQ-0050", "99XIQA")]
    pixels = seg.pixel_array.reshape(2, rows, columns)
    np.testing.assert_array_equal(pixels[0], removable)
    np.testing.assert_array_equal(pixels[1], devices)
    with pytest.raises(ValueError, match=r'Argument "mask" must have the source\'s shape'):
        build_segmentation(case.source, removable, ALGORITHM, device_mask=devices[:-1])


def test_places_the_seg_in_the_source_study_with_codes_and_algorithm(
        cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_12bit_explicit_window"]
    source, seg = case.source.dataset, dcmread(case.paths["seg"])
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID != source.SOPInstanceUID
    assert (seg.PatientID, seg.AccessionNumber, seg.StudyID) == \
        (source.PatientID, source.AccessionNumber, source.StudyID)
    assert int(seg.SeriesNumber) == 9101 and int(seg.InstanceNumber) == int(source.InstanceNumber)
    assert seg.SegmentationType == "BINARY" and seg.SpecificCharacterSet == "ISO_IR 192"
    assert seg.Manufacturer == "xiqa project" and seg.SoftwareVersions == ALGORITHM.version
    segment = seg.SegmentSequence[0]
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == \
        (codes.SCT.PhysicalObject.value, "SCT")
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == (codes.SCT.ForeignBody.value, "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("xiqa", ALGORITHM.version)
    assert ALGORITHM.model_id in algorithm.AlgorithmParameters
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_uids_are_reproducible_and_depend_on_the_model(cases: dict[str, WriterCase]) -> None:
    case = cases["dx_m2_14bit_j2k_window"]
    first = build_segmentation(case.source, case.mask, ALGORITHM)
    again = build_segmentation(case.source, case.mask, ALGORITHM)
    other = build_segmentation(case.source, case.mask,
                               AlgorithmInfo("xiqa", ALGORITHM.version, "another-model"))
    assert first.SOPInstanceUID == again.SOPInstanceUID == dcmread(case.paths["seg"]).SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    # two sources of one study share the SEG series of a model
    same_study = [c for c in cases.values()
                  if c.source.dataset.StudyInstanceUID == case.source.dataset.StudyInstanceUID]
    assert len({dcmread(c.paths["seg"]).SeriesInstanceUID for c in same_study}) == 1


def test_quirky_sources_are_repaired_not_copied(cases: dict[str, WriterCase]) -> None:
    seg = dcmread(cases["latin1_long_names"].paths["seg"])
    family, given, middle, prefix, suffix = str(seg.PatientName).split("^")
    assert family.startswith("MÜLLER-LÜDENSCHEIDT") and len(str(seg.PatientName).encode()) <= 64
    assert (given, middle, prefix, suffix) == ("FRANÇOIS-JÉRÔME", "", "DR.", "PH.D.")
    assert len(seg.StudyDescription.encode("utf-8")) <= 64
    seg = dcmread(cases["zero_spacing"].paths["seg"])
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelSpacing" not in shared.PixelMeasuresSequence[0]  # 0\0 is no spacing at all
    seg = dcmread(cases["broken_dates_and_codes"].paths["seg"])
    assert (seg.StudyDate, seg.StudyTime, seg.PatientBirthDate, seg.PatientSex) == \
        ("20240131", "123000", "", "")
    seg = dcmread(cases["missing_study_attributes"].paths["seg"])
    assert seg.AccessionNumber == "" and seg.StudyID == "" and seg.ReferringPhysicianName == ""
    seg = dcmread(cases["private_tags"].paths["seg"])
    assert not any(element.tag.is_private for element in seg)
    assert dcmread(cases["no_spacing_no_orientation"].paths["seg"]).PatientOrientation == ""


def test_no_patient_identity_in_warnings_or_logs(cases: dict[str, WriterCase]) -> None:
    leaked = [(case.name, message) for case in cases.values() for message in case.messages
              if any(name in message for name in PLANTED_IDENTITY)]
    assert leaked == []


def test_writes_to_a_file_that_reads_back(cases: dict[str, WriterCase], tmp_path: Path) -> None:
    case = cases["sc_m2_8bit_explicit_none"]
    seg = build_segmentation(case.source, case.mask.astype(np.uint8), ALGORITHM)
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    assert dcmread(BytesIO(buffer.getvalue())).SOPInstanceUID == seg.SOPInstanceUID


def test_rejects_bad_masks(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m2_10bit_implicit_none"]
    rows, columns = case.source.shape
    with pytest.raises(ValueError, match=r'Argument "mask" must have the source\'s shape'):
        build_segmentation(case.source, np.zeros((256, 256), np.uint8), ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "mask" must hold only 0 and 1'):
        build_segmentation(case.source, np.full((rows, columns), 2, np.uint8), ALGORITHM)
    with pytest.raises(TypeError, match=r'Argument "mask" must be bool or integer'):
        check_source_mask(np.zeros((rows, columns), np.float32), (rows, columns))
    with pytest.raises(TypeError, match=r'Argument "mask" must be a numpy array'):
        check_source_mask([[0, 1]], (1, 2))
    with pytest.raises(TypeError, match=r'Argument "source" must be a SourceImage'):
        build_segmentation(case.source.dataset, case.mask, ALGORITHM)
    with pytest.raises(TypeError, match=r'Argument "algorithm" must be an AlgorithmInfo'):
        build_segmentation(case.source, case.mask, "xiqa")


def test_algorithm_info_is_checked() -> None:
    with pytest.raises(ValueError, match=r'Argument "model_id" must not be empty'):
        AlgorithmInfo("xiqa", "1", "")
    with pytest.raises(ValueError, match=r'Argument "name" must fit DICOM LO'):
        AlgorithmInfo("x" * 65, "1", "m")
    with pytest.raises(TypeError, match=r'Argument "version" must be a str'):
        AlgorithmInfo("xiqa", 1, "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r'Argument "parameters" must be a tuple of str'):
        AlgorithmInfo("xiqa", "1", "m", ["saliency=gradcam"])  # type: ignore[arg-type]


def test_reference_copy_refuses_a_source_without_identity(cases: dict[str, WriterCase]) -> None:
    dataset = copy.deepcopy(cases["cr_m2_10bit_implicit_none"].source.dataset)
    del dataset.StudyInstanceUID
    with pytest.raises(ValueError, match=r'Argument "source" has no StudyInstanceUID'):
        reference_dataset(dataset)
