"""write_outputs' file contract, and a real Orthanc that files source and outputs in one study.

The Orthanc test starts the Debian ``orthanc`` server on loopback ports chosen
free at run time, with its own temporary configuration and storage, sends the
source and its three outputs by C-STORE (pynetdicom) and asks the REST API
what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from writer_cases import ALGORITHM, WriterCase, writer_cases
from xiqa.operators.output_writer import build_outputs, write_outputs

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
requires_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Orthanc not installed (Debian package orthanc)")


@pytest.fixture(scope="module")
def cases(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WriterCase]:
    return writer_cases(fixture_dir, tmp_path_factory.getbasetemp() / "writer_cases")


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Orthanc:
    def __init__(self, http_port: int, dicom_port: int) -> None:
        self.http_port, self.dicom_port = http_port, dicom_port

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as reply:
            return json.loads(reply.read())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[_Orthanc]:
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "xiqa-test", "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "index"), "HttpPort": http_port,
        "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
        "DicomAlwaysAllowStore": True, "StorageCompression": False, "SaveJobs": False,
        "HttpThreadsCount": 4, "ConcurrentJobs": 1,
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT)
    server = _Orthanc(http_port, dicom_port)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the REST API answers (or the server has died)
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with {process.returncode}: "
                            f"{(tmp_path / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("Orthanc did not answer on its REST port within 60 s")
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


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
                                                       orthanc: _Orthanc) -> None:
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
