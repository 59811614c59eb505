"""write_outputs' file contract, and a real Orthanc that files source and outputs in one study.

The Orthanc test starts the Debian ``orthanc`` server (``tests/orthanc.py``),
sends the source and its three outputs by C-STORE (pynetdicom) and asks the
REST API what it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from orthanc import Orthanc, requires_orthanc, running_orthanc
from pydicom import dcmread
from writer_cases import ALGORITHM, WriterCase
from xiqa.operators.output_writer import build_outputs, write_outputs


def test_write_outputs_names_files_after_the_source(cases: dict[str, WriterCase],
                                                     tmp_path: Path) -> None:
    case = cases["cr_m1_12bit_explicit_window"]
    paths = write_outputs(case.source, case.probability, case.saliency, case.quality,
                          case.summary, "template", ALGORITHM, tmp_path / "new" / "folder")
    uid = case.source.sop_instance_uid
    assert {kind: path.name for kind, path in paths.items()} == {
        "seg": f"{uid}_seg.dcm", "sc": f"{uid}_sc.dcm", "sr": f"{uid}_sr.dcm"}
    assert sorted(p.name for p in paths["seg"].parent.iterdir()) == sorted(
        p.name for p in paths.values())  # no temporary files left behind
    for kind, path in paths.items():
        assert dcmread(path).SOPInstanceUID == dcmread(case.paths[kind]).SOPInstanceUID
    # a second run overwrites with the same UIDs (idempotent reprocessing)
    again = write_outputs(case.source, case.probability, case.saliency, case.quality,
                          case.summary, "template", ALGORITHM, tmp_path / "new" / "folder")
    assert again == paths


def test_build_outputs_checks_its_own_arguments(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_12bit_explicit_window"]
    with pytest.raises(ValueError, match=r'Argument "threshold" must be in \(0, 1\)'):
        build_outputs(case.source, case.probability, case.saliency, case.quality, "s", "llm",
                      ALGORITHM, threshold=1.5)
    with pytest.raises(ValueError, match=r'Argument "probability" must be a 2-D numpy array'):
        build_outputs(case.source, case.probability[None], case.saliency, case.quality, "s",
                      "llm", ALGORITHM)
    built = build_outputs(case.source, np.zeros((256, 256), np.float32), case.saliency,
                          case.quality, "s", "llm", ALGORITHM)
    assert not built.seg.pixel_array.any()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path) as server:
        yield server


def _c_store(paths: list[Path], port: int) -> list[int]:
    from pynetdicom import AE, _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title="XIQATEST")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert association.is_established, "Orthanc refused the association"
    try:
        return [int(association.send_c_store(ds).Status) for ds in datasets]
    finally:
        association.release()


@requires_orthanc
def test_orthanc_files_source_and_outputs_in_one_study(cases: dict[str, WriterCase],
                                                       orthanc: Orthanc) -> None:
    chosen = [cases["cr_m1_12bit_explicit_window"], cases["latin1_long_names"]]
    for case in chosen:
        files = [case.source.path, case.paths["seg"], case.paths["sc"], case.paths["sr"]]
        assert _c_store(files, orthanc.dicom_port) == [0x0000] * 4

    studies = {orthanc.get(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"]: sid
               for sid in orthanc.get("/studies")}
    assert len(studies) == len(chosen)
    for case in chosen:
        source = case.source.dataset
        study = orthanc.get(f"/studies/{studies[source.StudyInstanceUID]}")
        series = [orthanc.get(f"/series/{sid}") for sid in study["Series"]]
        by_uid = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in series}
        assert len(by_uid) == 4
        new_series = set(by_uid) - {source.SeriesInstanceUID}
        assert len(new_series) == 3
        assert {by_uid[uid]["MainDicomTags"]["Modality"] for uid in new_series} == \
            {"SEG", "OT", "SR"}
        instances = {orthanc.get(f"/instances/{iid}")["MainDicomTags"]["SOPInstanceUID"]
                     for s in series for iid in s["Instances"]}
        expected = {source.SOPInstanceUID} | {dcmread(case.paths[k]).SOPInstanceUID
                                              for k in ("seg", "sc", "sr")}
        assert instances == expected
