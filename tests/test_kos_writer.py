"""The optional Key Object Selection "Rejected for Quality Reasons" of a Poor image: what it references,
where it sits, why it says the image is Poor, when it is written; dciodvfy and PixelMed find no error."""

from __future__ import annotations

import copy
import dataclasses
from io import BytesIO
from pathlib import Path

import pytest
from acquisition_phantoms import chest
from graph_harness import run_node
from orthanc import requires_orthanc, running_orthanc
from pydicom import Dataset, dcmread
from pydicom.uid import KeyObjectSelectionDocumentStorage
from writer_cases import (
    ALGORITHM,
    WriterCase,
    dciodvfy,
    pixelmed,
    requires_dciodvfy,
    requires_pixelmed,
    with_classes,
)
from xiqa.operators.acquisition import AcquisitionConfig, assess_acquisition
from xiqa.operators.case import Case
from xiqa.operators.gate import judge_frontal_chest
from xiqa.operators.kos_writer import (
    KosWriterOperator,
    build_rejection_note,
    rejection_description,
)
from xiqa.operators.scoring import QualityResult, Verdict
from xiqa.operators.segmentation import SegmentationResult

IDENTITY = {"PatientName": "CANARY^PATIENT", "PatientID": "CANARY-ID-77", "OtherPatientIDs": "CANARY-OTHER",
            "PatientAddress": "1 Canary Road", "PatientComments": "CANARY comment"}


def _poor(quality: QualityResult) -> QualityResult:
    """Every object removable, the first a jewellery chain; the removable-object verdict Poor."""
    count = len(quality.objects)
    classed = with_classes(quality, ["removable"] * count, ["jewellery_chain"] + [None] * (count - 1))
    return dataclasses.replace(classed, q_removable=0.31, verdict_removable=Verdict.POOR)


def _failing_acquisition(verdict_effect: str = "report"):
    """Lungs cut at the bottom and a shifted mediastinum: cut-off and rotation fail."""
    image = chest(shift_y=60, mediastinum_shift=20)
    region = judge_frontal_chest(None, image).region
    config = AcquisitionConfig(verdict_effect=verdict_effect)
    return assess_acquisition(image, region, Dataset(), config=config)


@pytest.fixture(scope="module")
def writer_case(cases: dict[str, WriterCase]) -> WriterCase:
    return next(case for case in cases.values() if len(case.quality.objects) >= 2)


@pytest.fixture(scope="module")
def note_path(writer_case: WriterCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = writer_case.source
    dataset = copy.deepcopy(source.dataset)  # the writer cases are shared: Dataset.copy() would alter them
    for keyword, value in IDENTITY.items():
        setattr(dataset, keyword, value)
    source = dataclasses.replace(source, dataset=dataset)
    description = rejection_description(_poor(writer_case.quality), _failing_acquisition())
    path = tmp_path_factory.mktemp("kos") / "kos.dcm"
    build_rejection_note(source, description, ALGORITHM).save_as(path, enforce_file_format=True)
    return path


def test_the_note_is_a_key_object_selection_titled_rejected_for_quality_reasons(note_path) -> None:
    note = dcmread(note_path)
    assert note.SOPClassUID == KeyObjectSelectionDocumentStorage and note.Modality == "KO"
    (title,) = note.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001", "DCM", "Rejected for Quality Reasons")


def test_the_note_references_the_analysed_image_in_its_study_and_sits_in_a_series_of_its_own(
        note_path, writer_case: WriterCase) -> None:
    note, source = dcmread(note_path), writer_case.source.dataset
    assert note.StudyInstanceUID == source.StudyInstanceUID
    outputs = [dcmread(path).SeriesInstanceUID for path in writer_case.paths.values()]
    others = {source.SeriesInstanceUID, *outputs}
    assert note.SeriesInstanceUID not in others
    images = [item for item in note.ContentSequence if item.ValueType == "IMAGE"]
    assert not any("ConceptNameCodeSequence" in item for item in images)  # TID 2010: no purpose of reference
    assert [(item.ReferencedSOPSequence[0].ReferencedSOPClassUID,
             item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in images] == [
        (source.SOPClassUID, source.SOPInstanceUID)]
    (study,) = note.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert [item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence] == [source.SOPInstanceUID]


def _description(note: Dataset) -> str:
    """The Key Object Description (113012, DCM)."""
    (text,) = [item.TextValue for item in note.ContentSequence
               if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "113012"]
    return text


def test_the_description_names_the_objects_and_the_failed_checks(note_path, writer_case: WriterCase) -> None:
    text = _description(dcmread(note_path))
    count = len(writer_case.quality.objects)
    assert text.startswith(f"Poor image quality (xiqa): foreign objects Poor (removable objects, Q 0.310; "
                           f"{count} objects: jewellery chain, ")
    assert text.endswith("; acquisition checks failed: anatomy cut off, rotation.")


def test_the_note_carries_no_patient_identifier_beyond_the_patient_module(note_path) -> None:
    note = dcmread(note_path)
    assert (str(note.PatientName), note.PatientID) == ("CANARY^PATIENT", "CANARY-ID-77")  # Patient module
    for keyword in ("OtherPatientIDs", "PatientAddress", "PatientComments"):
        assert keyword not in note
    text = _description(note)
    assert "CANARY" not in text and "Canary" not in text


def test_only_an_overall_verdict_poor_has_a_description(writer_case: WriterCase) -> None:
    good = dataclasses.replace(_poor(writer_case.quality), verdict_removable=Verdict.GOOD)
    with pytest.raises(ValueError, match='Argument "quality" must give an overall verdict Poor'):
        rejection_description(good, _failing_acquisition("report"))
    # under verdict effect "poor" the failed checks alone make the image Poor
    assert rejection_description(good, _failing_acquisition("poor")) == (
        "Poor image quality (xiqa): acquisition checks failed: anatomy cut off, rotation.")


def _case(writer_case: WriterCase, quality: QualityResult) -> Case:
    segmentation = SegmentationResult(writer_case.probability, writer_case.grid_mask, ALGORITHM.model_id)
    return Case(path=writer_case.source.path, source=writer_case.source, quality=quality,
                segmentation=segmentation, acquisition=_failing_acquisition())


def test_the_node_writes_a_note_only_when_enabled_and_the_image_is_poor(writer_case, tmp_path) -> None:
    poor = _poor(writer_case.quality)
    good = dataclasses.replace(poor, verdict_removable=Verdict.GOOD)
    enabled = run_node(lambda app: KosWriterOperator(app, output=tmp_path / "on", enabled=True, name="kos"),
                       [_case(writer_case, poor), _case(writer_case, good)])
    assert [case.ok for case in enabled] == [True, True], [case.error for case in enabled]
    uid = writer_case.source.sop_instance_uid
    assert enabled[0].outputs == {"kos": tmp_path / "on" / uid / f"{uid}_kos.dcm"}
    assert enabled[1].outputs == {}
    (off,) = run_node(lambda app: KosWriterOperator(app, output=tmp_path / "off", name="kos"),
                      [_case(writer_case, poor)])
    assert off.ok and off.outputs == {} and not (tmp_path / "off").exists()


@requires_dciodvfy
def test_dciodvfy_finds_no_error_in_the_note(note_path) -> None:
    report = dciodvfy(note_path)
    assert report.errors == [], report.text


@requires_pixelmed
def test_pixelmed_finds_no_error_in_the_note(note_path) -> None:
    (report,) = pixelmed([note_path]).values()
    assert report.errors == [], report.text


def test_a_second_note_on_the_same_image_has_the_same_uids(writer_case: WriterCase, note_path) -> None:
    """Derived UIDs, as the other outputs': a resend replaces the note instead of adding one."""
    description = rejection_description(_poor(writer_case.quality), _failing_acquisition())
    buffer = BytesIO()
    build_rejection_note(writer_case.source, description, ALGORITHM).save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    again, first = dcmread(buffer), dcmread(note_path)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)


@requires_orthanc
def test_orthanc_files_the_note_in_the_source_study_in_a_ko_series(writer_case: WriterCase, tmp_path) -> None:
    from test_outputs_orthanc import _c_store

    description = rejection_description(_poor(writer_case.quality), _failing_acquisition())
    note_file = tmp_path / "kos.dcm"
    note = build_rejection_note(writer_case.source, description, ALGORITHM)
    note.save_as(note_file, enforce_file_format=True)
    source = writer_case.source.dataset
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        assert _c_store([writer_case.source.path, note_file], orthanc.dicom_port) == [0x0000, 0x0000]
        (study,) = [orthanc.get(f"/studies/{sid}") for sid in orthanc.get("/studies")]
        assert study["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
        series = [orthanc.get(f"/series/{sid}")["MainDicomTags"] for sid in study["Series"]]
    modalities = sorted(tags["Modality"] for tags in series)
    assert modalities == sorted([source.Modality, "KO"])
    assert note.SeriesInstanceUID in {tags["SeriesInstanceUID"] for tags in series}
