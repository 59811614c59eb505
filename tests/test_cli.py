"""`xiqa analyze` and `xiqa demo`: outputs per source, rejection lines, exit codes, no patient identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from xiqa.cli import EXIT_NOT_CHEST, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, main


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    """An untrained bundle: the contract does not depend on what the network finds."""
    from xiqa.operators.segmentation import NetworkSpec, build_network
    from xiqa.training.trainer import write_bundle

    spec = NetworkSpec(encoder="mobilenet_v2")
    folder = tmp_path_factory.mktemp("bundle") / "random"
    return write_bundle(folder, build_network(spec), spec, name="random", description="untrained",
                        metrics={}, training={})


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xiqa.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_analyze_writes_reports_and_rejects_broken_file_with_exit_1(tmp_path, fixture_dir, random_bundle):
    inputs = tmp_path / "in"
    shutil.copytree(fixture_dir / "dicom", inputs)
    (inputs / "broken.dcm").write_text("CANARY^PHI^LEAK")
    result = _run("analyze", str(inputs), "--output", str(tmp_path / "out"), "--model", str(random_bundle),
                  "--no-progress")
    assert result.returncode == EXIT_REJECTED, result.stderr
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected ")]
    reason = "not a DICOM file (no DICM prefix and no valid header)"
    assert rejected == [f"rejected {inputs / 'broken.dcm'}: {reason}"]
    reports = sorted((tmp_path / "out").glob("*/report.json"))
    assert len(reports) == len(list(fixture_dir.glob("dicom/*/*.dcm")))
    report = json.loads(reports[0].read_text())
    for key in ("source_sop_instance_uid", "q_img", "q_filtered", "verdict", "objects", "saliency_method",
                "model_id", "summary", "timings_seconds"):
        assert key in report
    assert report["model_id"].startswith("random@")
    # the random test bundle has no seed threshold: plain thresholding, nothing removed
    assert (report["mask_threshold"], report["seed_threshold"], report["sure_area"],
            report["components_below_seed"]) == (0.5, None, None, 0)
    assert {"load", "preprocess", "segmentation", "scoring"} <= set(report["timings_seconds"])
    assert (reports[0].parent / "report.png").stat().st_size > 10_000
    for stream in (result.stdout, result.stderr):
        assert "CANARY" not in stream and "DOE^JANE" not in stream and "XQ0" not in stream


def test_analyze_exits_0_when_every_input_is_processed(tmp_path, fixture_records, random_bundle, capsys):
    # in-process on purpose: the graph must run more than once in one process (service, tests)
    status = main(["analyze", str(fixture_records[0].dicom_path), "--output", str(tmp_path),
                   "--model", str(random_bundle)])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    assert "verdict" in captured.out and "Q_img" in captured.out


def test_missing_input_is_rejected_by_name(tmp_path, fixture_records, random_bundle, capsys):
    status = main(["analyze", str(tmp_path / "nope.dcm"), str(fixture_records[1].dicom_path),
                   "--output", str(tmp_path / "o"), "--model", str(random_bundle)])
    assert status == EXIT_REJECTED
    assert f"rejected {tmp_path / 'nope.dcm'}: no such file or folder" in capsys.readouterr().err
    assert len(list((tmp_path / "o").glob("*/report.json"))) == 1


def test_analyze_takes_the_acquisition_settings_that_serve_takes(tmp_path, fixture_records, random_bundle,
                                                                 capsys):
    status = main(["analyze", str(fixture_records[0].dicom_path), "--output", str(tmp_path),
                   "--model", str(random_bundle), "--acquisition-verdict-effect", "poor",
                   "--deviation-index-band=-1,1.5", "--cut-off-margin", "0.02", "--max-field-ratio", "1.5"])
    assert status == EXIT_OK, capsys.readouterr().err
    (report_path,) = tmp_path.glob("*/report.json")
    acquisition = json.loads(report_path.read_text())["acquisition"]
    assert acquisition["verdict_effect"] == "poor"
    assert acquisition["checks"]["anatomy_cut_off"]["threshold"] == 0.02
    assert acquisition["checks"]["collimation"]["threshold"] == 1.5


def test_the_result_line_names_the_failed_checks_and_the_overall_verdict_they_make(
        tmp_path, fixture_records, random_bundle, capsys):
    # every landmark within the whole side of the field's edge: cut off, and Poor under effect "poor"
    for effect in ("report", "poor"):
        status = main(["analyze", str(fixture_records[0].dicom_path), "--output", str(tmp_path / effect),
                       "--model", str(random_bundle), "--no-progress", "--cut-off-margin", "1",
                       "--acquisition-verdict-effect", effect])
        assert status == EXIT_OK
        (line,) = capsys.readouterr().out.splitlines()
        report = json.loads(next((tmp_path / effect).glob("*/report.json")).read_text())
        assert f" acquisition failed {','.join(report['acquisition']['failed'])}" in line, line
        assert "anatomy_cut_off" in line
        changed = report["overall_verdict"] != report["verdict"]
        assert (" overall Poor" in line) == (effect == "poor" and changed), line


def test_reject_kos_writes_a_rejection_note_for_a_poor_image_and_lists_it(tmp_path, fixture_records,
                                                                           random_bundle):
    from pydicom import dcmread

    # every landmark within the whole side of the field's edge: cut off, and Poor under effect "poor"
    poor = ["--acquisition-verdict-effect", "poor", "--cut-off-margin", "1"]
    for flags, folder in ((["--reject-kos"], "on"), ([], "off")):
        status = main(["analyze", str(fixture_records[0].dicom_path), "--output", str(tmp_path / folder),
                       "--model", str(random_bundle), "--no-progress", *poor, *flags])
        assert status == EXIT_OK
    (on,) = (tmp_path / "on").glob("*/report.json")
    report = json.loads(on.read_text())
    assert report["overall_verdict"] == "Poor" and "anatomy_cut_off" in report["acquisition"]["failed"]
    note = dcmread(on.parent / report["outputs"]["kos"])
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert note.StudyInstanceUID == report["study_instance_uid"]
    (off,) = (tmp_path / "off").glob("*/report.json")
    assert "kos" not in json.loads(off.read_text())["outputs"]  # off by default
    assert not list((tmp_path / "off").glob("*/*_kos.dcm"))


@pytest.mark.parametrize("flags, error", [
    (["--acquisition-verdict-effect", "ignore"],
     "acquisition_verdict_effect must be one of ('report', 'poor'), got 'ignore'"),
    (["--deviation-index-band", "3,1"],
     "deviation_index_band must be (low, high) with low < high, got (3.0, 1.0)"),
    (["--deviation-index-band", "3"], "deviation_index_band must be two numbers LOW,HIGH, got '3'"),
    (["--max-field-ratio", "0.5"], "max_field_ratio must be at least 1, got 0.5"),
    (["--min-lung-height-ratio", "tall"], "min_lung_height_ratio must be a number, got 'tall'"),
])
def test_a_bad_acquisition_setting_is_one_error_line_and_exit_2(tmp_path, capsys, flags, error):
    assert main(["analyze", str(tmp_path), "--output", str(tmp_path / "o"), *flags]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [f"xiqa analyze: error: {error}"]
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_usage_errors_exit_2():
    assert main(["analyze", "x.dcm"]) == EXIT_USAGE  # --output missing
    assert main(["analyze", "x.dcm", "--output", "o", "--saliency", "lime"]) == EXIT_USAGE
    assert main(["frobnicate"]) == EXIT_USAGE


def test_images_that_are_not_frontal_chests_are_not_scored_and_exit_3(tmp_path, fixture_records,
                                                                       random_bundle):
    """A real extremity CR and a real chest CR tagged lateral: an SR and a report with the reason, no
    verdict, no SEG or SC; the chest phantom in the same batch is scored as usual."""
    import copy

    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from writer_cases import DSRDUMP, dciodvfy

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(fixture_records[0].dicom_path, inputs / "chest.dcm")
    shutil.copy(get_testdata_file("RG3_J2KR.dcm"), inputs / "ankle.dcm")
    lateral = copy.deepcopy(dcmread(get_testdata_file("RG1_J2KR.dcm")))
    lateral.ViewPosition = "LL"
    lateral.save_as(inputs / "lateral.dcm")
    result = _run("analyze", str(inputs), "--output", str(tmp_path / "out"), "--model",
                  str(random_bundle))
    assert result.returncode == EXIT_NOT_CHEST, result.stderr
    not_scored = sorted(line for line in result.stderr.splitlines() if line.startswith("not scored "))
    assert not_scored == [
        f"not scored {inputs / 'ankle.dcm'}: not a frontal chest radiograph: Body Part Examined is EXTREMITY",
        f"not scored {inputs / 'lateral.dcm'}: not a frontal chest radiograph: "
        "View Position is LL (not frontal)",
    ]
    reports = {json.loads(path.read_text())["source_sop_instance_uid"]: json.loads(path.read_text())
               for path in (tmp_path / "out").glob("*/report.json")}
    assert len(reports) == 3
    refused = [report for report in reports.values() if not report["frontal_chest"]]
    assert len(refused) == 2
    for report in refused:
        assert report["q_img"] is None and report["verdict"] is None and report["objects"] == []
        assert report["not_scored_reason"].startswith("not a frontal chest radiograph: ")
        assert set(report["outputs"]) == {"sr", "report_png", "report_json"}
        sr = next((tmp_path / "out").glob(f"*/{report['outputs']['sr']}"))
        assert dciodvfy(sr).errors == []
        rendered = subprocess.run([DSRDUMP, "+Pl", str(sr)], capture_output=True, text=True,
                                  timeout=60).stdout
        assert "Not a frontal chest radiograph" in rendered and report["not_scored_reason"] in rendered
        assert "Q_img" not in rendered
    (scored,) = [report for report in reports.values() if report["frontal_chest"]]
    assert scored["verdict"] in {"Good", "Acceptable", "Poor"} and scored["gate"]["chest_region"]["found"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``xiqa demo`` as README command 1 runs it: the shipped model, the shipped real plates."""
    folder = tmp_path_factory.mktemp("demo")
    return folder, _run("demo", "--output", str(folder))


@pytest.mark.slow  # the whole graph with the shipped model over 7 plates: ~45 s on 2 cores
def test_demo_prints_each_real_plate_by_its_label_and_the_attribution(demo_run):
    from xiqa.demo import read_demo_manifest

    folder, result = demo_run
    assert result.returncode == EXIT_OK, result.stderr
    manifest = read_demo_manifest()
    lines = result.stdout.splitlines()
    for plate in manifest["plates"]:
        label = f"{plate['label']} ({plate['credit']})"
        (line,) = [line for line in lines if line.startswith(f"{label}: ")]
        assert " Q_img " in line and " verdict " in line and line.endswith("report.png"), line
    assert len([line for line in lines if " Q_img " in line]) == len(manifest["plates"]) + 4  # 4 phantoms
    assert "CC BY 3.0" in manifest["attribution"] and f"real plates: {manifest['attribution']}" in lines


@pytest.mark.slow  # the whole graph with the shipped model over 7 plates: ~45 s on 2 cores
def test_demo_writes_real_plates_as_tagged_dicom_of_a_synthetic_patient_and_outputs_per_plate(demo_run):
    from pydicom import dcmread
    from xiqa.demo import read_demo_manifest

    folder, _ = demo_run
    plates = {plate["file"].removesuffix(".png"): plate for plate in read_demo_manifest()["plates"]}
    written = sorted((folder / "input" / "real").glob("*.dcm"))
    assert {path.stem for path in written} == set(plates)
    for path in written:
        dataset = dcmread(path)
        plate = plates[path.stem]
        assert (dataset.Modality, dataset.BodyPartExamined) == (plate["modality"], "CHEST")
        assert dataset.ViewPosition == plate["projection"]
        assert str(dataset.PatientName).startswith("DEMO^") and dataset.PatientID.startswith("DEMO")
        report = json.loads((folder / "output" / dataset.SOPInstanceUID / "report.json").read_text())
        assert report["source_sop_instance_uid"] == dataset.SOPInstanceUID
        assert report["frontal_chest"], report.get("not_scored_reason")
        assert report["verdict"] in {"Good", "Acceptable", "Poor"}
        for kind in ("seg", "sc", "sr"):
            assert (folder / "output" / dataset.SOPInstanceUID / report["outputs"][kind]).is_file(), kind


def test_analyze_refuses_a_second_input_with_the_same_sop_instance_uid_and_keeps_the_first(
        tmp_path, fixture_records, random_bundle, capsys):
    import pydicom

    first = fixture_records[0].dicom_path
    edited = tmp_path / "edited_copy.dcm"
    dataset = pydicom.dcmread(first)
    dataset.SeriesDescription = "edited copy"  # same SOP Instance UID, other content
    dataset.save_as(edited)
    other = fixture_records[1].dicom_path
    status = main(["analyze", str(first), str(edited), str(other), "--output", str(tmp_path / "o"),
                   "--model", str(random_bundle), "--no-progress"])
    err = capsys.readouterr().err
    assert status == EXIT_REJECTED
    rejected = [line for line in err.splitlines() if line.startswith("rejected ")]
    assert rejected == [f"rejected {edited}: duplicate SOP Instance UID: {first} in this batch has the "
                        "same one (its results are kept, this input is not analysed)"]
    reports = sorted((tmp_path / "o").glob("*/report.json"))
    assert len(reports) == 2  # the first input's and the other one's; nothing was overwritten
    uid = str(dataset.SOPInstanceUID)
    kept = json.loads((tmp_path / "o" / uid / "report.json").read_text())
    assert kept["source_sop_instance_uid"] == uid
