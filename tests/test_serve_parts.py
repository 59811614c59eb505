"""``xiqa serve`` part by part, in process: settings, spool, the SCP over real loopback associations,
and the worker running the real graph on spooled studies."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from serve_helpers import associate, echo, large_plates, send
from waiting import wait_until
from xiqa.service.listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, BulkReadSocket, study_uid_of
from xiqa.service.metrics import NodeMetrics
from xiqa.service.settings import Destination, ServeSettings, read_config, settings_from_mapping
from xiqa.service.spool import INCOMING, NO_STUDY, PROCESSED, RECEIVING, REJECTED, Spool, SpooledInstance

# --------------------------------------------------------------------------- settings


def test_destination_parses_aet_host_port_and_names_bad_input() -> None:
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert Destination.parse("PACS@[::1]:11112").host == "::1"
    with pytest.raises(ValueError, match="AET@HOST:PORT, got 'PACS:104'"):
        Destination.parse("PACS:104")
    with pytest.raises(ValueError, match="destination port must be a TCP port"):
        Destination.parse("PACS@host:70000")
    with pytest.raises(ValueError, match="destination AE title must be 1-16"):
        Destination.parse("A_TITLE_THAT_IS_FAR_TOO_LONG@host:104")


def test_config_file_keys_become_settings_and_unknown_keys_are_named(tmp_path: Path) -> None:
    config = tmp_path / "xiqa.toml"
    config.write_text('[serve]\nae-title = "EDGE1"\nport = 4242\nstorage = "/data/spool"\n'
                      'output = "/data/out"\nforward = ["PACS@pacs:104", "VNA@vna:11112"]\n'
                      'allowed_ae_titles = "CR1,DX2"\nstudy-timeout = 0\n')
    settings = settings_from_mapping(read_config(config), str(config))
    assert (settings.ae_title, settings.port, settings.storage) == ("EDGE1", 4242, Path("/data/spool"))
    assert settings.forward == (Destination("PACS", "pacs", 104), Destination("VNA", "vna", 11112))
    assert settings.allowed_ae_titles == ("CR1", "DX2")
    assert settings.per_instance
    with pytest.raises(ValueError, match=r"xiqa.toml: unknown key 'colour'"):
        settings_from_mapping({"storage": "a", "output": "b", "colour": "red"}, str(config))
    with pytest.raises(ValueError, match="output is required"):
        settings_from_mapping({"storage": "a"}, "flags")


def test_review_page_and_summary_model_come_from_the_config_file_and_flags_win(tmp_path: Path) -> None:
    from xiqa.cli import build_parser, serve_settings

    config = tmp_path / "xiqa.toml"
    config.write_text('storage = "s"\noutput = "o"\nreview-port = 8080\nsummary-model = "/m/a.gguf"\n')
    settings = serve_settings(build_parser().parse_args(["serve", "--config", str(config)]))
    # the review page shows UIDs and verdicts: loopback unless a site says otherwise
    assert (settings.review_port, settings.review_bind) == (8080, "127.0.0.1")
    assert settings.summary_model == Path("/m/a.gguf")
    flags = ["serve", "--config", str(config), "--review-port", "9090", "--review-bind", "0.0.0.0",
             "--summary-model", "/m/b.gguf"]
    settings = serve_settings(build_parser().parse_args(flags))
    assert (settings.review_port, settings.review_bind, settings.summary_model) == (
        9090, "0.0.0.0", Path("/m/b.gguf"))
    assert serve_settings(build_parser().parse_args(["serve", "--storage", "s", "--output", "o"])) \
        .summary_model is None  # the template


def test_acquisition_settings_come_from_the_config_file_and_flags_win(tmp_path: Path) -> None:
    from xiqa.cli import build_parser, serve_settings
    from xiqa.operators.acquisition import AcquisitionConfig

    config = tmp_path / "xiqa.toml"
    config.write_text('storage = "s"\noutput = "o"\nacquisition-verdict-effect = "poor"\n'
                      'deviation_index_band = [-2, 2]\nmax_clipped_lung = 0.1\n')
    settings = serve_settings(build_parser().parse_args(["serve", "--config", str(config)]))
    from_file = {"verdict_effect": "poor", "deviation_index_band": (-2.0, 2.0), "max_clipped_lung": 0.1}
    assert settings.acquisition_config() == AcquisitionConfig(**from_file)
    flags = ["--deviation-index-band=-1,1", "--min-lung-height-ratio", "0.5"]
    settings = serve_settings(build_parser().parse_args(["serve", "--config", str(config), *flags]))
    assert settings.deviation_index_band == (-1.0, 1.0)
    assert settings.acquisition_config() == AcquisitionConfig(
        **{**from_file, "deviation_index_band": (-1.0, 1.0), "min_lung_height_ratio": 0.5})
    defaults = ServeSettings(storage=tmp_path / "s", output=tmp_path / "o")
    assert defaults.acquisition_config() == AcquisitionConfig()


def test_a_bad_acquisition_setting_is_refused_by_its_key_in_one_line() -> None:
    for key, value, message in (
            ("max_field_ratio", 0.5, "max_field_ratio must be at least 1, got 0.5"),
            ("deviation_index_band", "x", "deviation_index_band must be two numbers LOW,HIGH"),
            ("acquisition_verdict_effect", "ignore", "acquisition_verdict_effect must be one of")):
        with pytest.raises(ValueError, match=rf"^xiqa.toml: {re.escape(message)}") as raised:
            settings_from_mapping({"storage": "s", "output": "o", key: value}, "xiqa.toml")
        assert "\n" not in str(raised.value)


def test_reject_kos_is_off_unless_the_config_file_or_the_flag_turns_it_on(tmp_path: Path) -> None:
    from xiqa.cli import build_parser, serve_settings

    config = tmp_path / "xiqa.toml"
    config.write_text('storage = "s"\noutput = "o"\n')
    serve = ["serve", "--config", str(config)]
    assert not serve_settings(build_parser().parse_args(serve)).reject_kos
    assert serve_settings(build_parser().parse_args([*serve, "--reject-kos"])).reject_kos
    assert settings_from_mapping({"storage": "s", "output": "o", "reject-kos": True}, "xiqa.toml").reject_kos
    with pytest.raises(ValueError, match="^xiqa.toml: reject kos must be true or false, got 'yes'$"):
        settings_from_mapping({"storage": "s", "output": "o", "reject_kos": "yes"}, "xiqa.toml")


def test_settings_refuse_contradictions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage and output must be different folders"):
        ServeSettings(storage=tmp_path, output=tmp_path)
    with pytest.raises(ValueError, match="TLS needs both a certificate and a key"):
        ServeSettings(storage=tmp_path / "s", output=tmp_path / "o", tls_certificate=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="study timeout must be >= 0"):
        ServeSettings(storage=tmp_path / "s", output=tmp_path / "o", study_timeout=-1)
    with pytest.raises(ValueError, match="AE title must be 1-16"):
        ServeSettings(storage=tmp_path / "s", output=tmp_path / "o", ae_title="BAD\\TITLE")


# --------------------------------------------------------------------------- spool


def test_spool_keeps_instances_until_finished_and_ignores_resends(fixture_records, tmp_path: Path) -> None:
    record = fixture_records[0]
    encoded = record.dicom_path.read_bytes()
    uid = str(dcmread(record.dicom_path, stop_before_pixels=True).SOPInstanceUID)
    study = str(dcmread(record.dicom_path, stop_before_pixels=True).StudyInstanceUID)
    spool = Spool(tmp_path)
    stored = spool.store([encoded], uid, study)
    assert stored == SpooledInstance(study, tmp_path / INCOMING / study / f"{uid}.dcm")
    assert stored.path.read_bytes() == encoded
    (stored.path.parent / f".{uid}.dcm.abc.part").write_bytes(b"half")  # a write killed half-way
    arriving = spool.receiving_file()  # a data set half-way in when the node was killed
    arriving.write(encoded[:1000])
    assert Spool(tmp_path).waiting() == [stored]  # a restart finds it, and drops the partial files
    assert not list(stored.path.parent.glob("*.part")) and not any((tmp_path / RECEIVING).iterdir())
    done = spool.finish(stored)
    assert done == tmp_path / PROCESSED / study / f"{uid}.dcm" and not stored.path.exists()
    assert spool.store([encoded], uid, study) is None  # sent again: acknowledged, never processed twice
    assert Spool(tmp_path).waiting() == []


def test_a_data_set_larger_than_the_writeback_step_is_kept_byte_for_byte(tmp_path: Path) -> None:
    from xiqa.service.spool import WRITEBACK_BYTES

    payload = np.random.default_rng(1).integers(0, 256, 3 * WRITEBACK_BYTES + 12345, dtype=np.uint8).tobytes()
    spool = Spool(tmp_path)
    received = spool.receiving_file()
    for start in range(0, len(payload), 131066):  # as PDUs of 128 KiB bring it
        received.write(memoryview(payload)[start:start + 131066])
    assert 2 * WRITEBACK_BYTES <= received._handed_to_disk < len(payload)  # given to the disk on the way
    stored = spool.adopt(received, "1.2.3", "1.2")
    assert stored.path.read_bytes() == payload and not any((tmp_path / RECEIVING).iterdir())


def test_spool_records_why_an_instance_was_rejected(fixture_records, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stored = spool.store([fixture_records[1].dicom_path.read_bytes()], "1.2.3", "")
    assert stored.study == NO_STUDY
    target = spool.finish(stored, reason="loader failed: colour images are not supported")
    assert target.parent.parent == tmp_path / REJECTED
    assert target.with_suffix(".reason.txt").read_text() == "loader failed: colour images are not supported\n"


# --------------------------------------------------------------------------- listener


def test_store_acknowledges_only_what_is_on_disk(listening, fixture_records) -> None:
    listener, spool, metrics, stored = listening()
    paths = [r.dicom_path for r in fixture_records]
    statuses = send(listener.port, paths)
    assert statuses == [SUCCESS] * len(paths)  # every variant, compressed ones included
    assert len(stored) == len(paths)
    for path, instance in zip(paths, stored, strict=True):
        sent, kept = dcmread(path), dcmread(instance.path)
        assert (kept.SOPInstanceUID, kept.PixelData) == (sent.SOPInstanceUID, sent.PixelData)
        assert instance.study == sent.StudyInstanceUID  # read from the dataset in its transfer syntax
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert metrics.registry.get_sample_value("xiqa_instances_received_total") == len(paths)
    assert echo(listener.port)


def test_full_storage_answers_out_of_resources(listening, fixture_records) -> None:
    listener, spool, metrics, stored = listening(min_free_bytes=2**62)
    assert send(listener.port, [fixture_records[0].dicom_path]) == [OUT_OF_RESOURCES]
    assert stored == [] and spool.waiting() == []
    assert metrics.registry.get_sample_value("xiqa_instances_refused_total",
                                             {"reason": "storage full"}) == 1


def test_only_radiograph_sop_classes_are_accepted(listening, fixture_records) -> None:
    listener, spool, metrics, stored = listening()
    computed_tomography = Path(get_testdata_file("CT_small.dcm"))
    assert send(listener.port, [computed_tomography, fixture_records[0].dicom_path]) == [None, SUCCESS]
    assert [i.path.stem for i in stored] == [str(dcmread(fixture_records[0].dicom_path).SOPInstanceUID)]


def test_allow_lists_turn_away_unknown_callers(listening, fixture_records) -> None:
    listener, *_ = listening(allowed_ae_titles=("CR_ROOM_1",))
    assert echo(listener.port, calling="CR_ROOM_1")
    with pytest.raises(ConnectionError):
        send(listener.port, [fixture_records[0].dicom_path], calling="INTRUDER")
    by_host, *_ = listening(allowed_hosts=("10.99.99.99",))
    assert not echo(by_host.port)


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` (its own CA) and its key: (certificate, key)."""
    key, certificate = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(certificate)], check=True, capture_output=True)
    return certificate, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_listener_talks_to_a_tls_caller_only(listening, tmp_path: Path) -> None:
    certificate, key = _self_signed(tmp_path, "node")
    listener, *_ = listening(tls_certificate=certificate, tls_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificate))
    assert echo(listener.port, ssl_context=client)
    assert not echo(listener.port)  # plain DICOM to a TLS port gets nowhere


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_health_check_reaches_a_tls_node_with_tls_and_a_client_certificate_where_required(
        listening, tmp_path: Path, capsys) -> None:
    from xiqa.cli import main

    certificate, key = _self_signed(tmp_path, "node")
    client_certificate, client_key = _self_signed(tmp_path, "probe")
    tls_only, *_ = listening(tls_certificate=certificate, tls_key=key)
    assert main(["health", "--port", str(tls_only.port), "--timeout", "5"]) == 1
    assert main(["health", "--port", str(tls_only.port), "--timeout", "5", "--tls"]) == 0
    mutual, *_ = listening(tls_certificate=certificate, tls_key=key, tls_ca=client_certificate)
    assert main(["health", "--port", str(mutual.port), "--timeout", "5", "--tls"]) == 1
    assert main(["health", "--port", str(mutual.port), "--timeout", "5", "--tls-certificate",
                 str(client_certificate), "--tls-key", str(client_key)]) == 0
    assert main(["health", "--port", str(mutual.port), "--tls-certificate", str(tmp_path / "none.pem")]) == 2
    lines = capsys.readouterr()
    assert lines.out.count("healthy: XIQA@127.0.0.1") == 2
    assert "cannot use the TLS client certificate" in lines.err.splitlines()[-1]


# --------------------------------------------------------------------------- worker


@pytest.fixture(scope="module")
def run_settings(tmp_path_factory: pytest.TempPathFactory):
    from xiqa.app import build_settings

    return build_settings([], tmp_path_factory.mktemp("worker-out"), device="cpu")


def test_worker_processes_a_complete_study_and_sets_aside_a_broken_instance(
        run_settings, fixture_records, tmp_path: Path) -> None:
    from xiqa.service.worker import Worker

    spool, metrics = Spool(tmp_path / "storage"), NodeMetrics()
    good = fixture_records[0].dicom_path
    broken = tmp_path / "broken.dcm"
    dataset = dcmread(fixture_records[1].dicom_path)
    dataset.Rows = dataset.Rows * 2  # the pixel data is now too short for the header
    dataset.save_as(broken)
    worker = Worker(run_settings, spool, metrics, study_timeout=0.2)
    for path in (good, broken):
        header = dcmread(path, stop_before_pixels=True)
        worker.add(spool.store([path.read_bytes()], header.SOPInstanceUID, header.StudyInstanceUID))
    assert metrics.registry.get_sample_value("xiqa_queue_depth") == 2
    assert worker.wait_for_complete(timeout=5)
    time.sleep(0.05)  # both arrived within a few ms: both studies are complete now
    cases = worker.process_complete()
    worker.close()
    assert sorted(case.ok for case in cases) == [False, True]
    good_case = next(case for case in cases if case.ok)
    assert {kind: path.exists() for kind, path in good_case.outputs.items()} == {
        "seg": True, "sc": True, "sr": True, "report_png": True, "report_json": True}
    assert spool.waiting() == []
    rejected = list((tmp_path / "storage" / REJECTED).rglob("*.reason.txt"))
    assert len(rejected) == 1 and "pixel" in rejected[0].read_text().lower()
    assert metrics.registry.get_sample_value("xiqa_instances_processed_total") == 1
    assert metrics.registry.get_sample_value("xiqa_instances_rejected_total") == 1
    assert metrics.registry.get_sample_value("xiqa_queue_depth") == 0
    assert metrics.registry.get_sample_value("xiqa_stage_seconds_count", {"stage": "segmentation"}) == 1


def test_worker_keeps_one_graph_for_study_after_study_and_builds_a_new_one_when_it_dies(
        run_settings, fixture_records, tmp_path: Path) -> None:
    from xiqa.operators.writer_common import OutputKind
    from xiqa.service.outbox import Outbox
    from xiqa.service.worker import Worker

    spool, metrics = Spool(tmp_path / "storage"), NodeMetrics()
    outbox_folder = tmp_path / "outbox"
    outbox = Outbox(outbox_folder, [Destination("PACS", "127.0.0.1", 1)], calling_ae_title="XIQA",
                    metrics=metrics)
    shutil.rmtree(outbox_folder)
    outbox_folder.write_bytes(b"")  # not a folder: the outbox's first write fails in the graph's thread
    worker = Worker(run_settings, spool, metrics, study_timeout=0, forwarder=outbox)
    stored = []
    for record in fixture_records[:2]:
        header = dcmread(record.dicom_path, stop_before_pixels=True)
        study = f"study{len(stored)}"
        stored.append(spool.store([record.dicom_path.read_bytes()], header.SOPInstanceUID, study))
    try:
        assert worker.process("study0", [stored[0]]) == []  # the graph died with the outbox
        assert stored[0].path.exists() and len(spool.waiting()) == len(stored)
        outbox_folder.unlink()
        outbox_folder.mkdir()
        cases = [case for instance in stored for case in worker.process(instance.study, [instance])]
        graph = worker._graph
        assert [case.path.name for case in cases] == [instance.path.name for instance in stored]
        assert all(case.ok for case in cases) and spool.waiting() == []
        assert len(list(outbox_folder.glob("*.json"))) == sum(
            kind.value in case.outputs for case in cases for kind in OutputKind)
        broken = spool.store([b"not DICOM"], "1.2.3", "study9")
        assert [case.ok for case in worker.process("study9", [broken])] == [False]
        assert worker._graph is graph and graph.alive  # a rejected case does not end the graph
        assert graph.app.cases == []  # the long-lived graph holds no case once the worker has it
    finally:
        worker.close()
    assert not graph.alive
    assert metrics.registry.get_sample_value("xiqa_instances_processed_total") == 2
    assert metrics.registry.get_sample_value("xiqa_instances_rejected_total") == 1


def test_worker_forwards_the_rejection_note_of_a_poor_image_with_the_other_outputs(
        run_settings, fixture_records, tmp_path: Path) -> None:
    import dataclasses
    import json

    from xiqa.operators.acquisition import AcquisitionConfig
    from xiqa.service.outbox import Outbox
    from xiqa.service.worker import Worker

    # every landmark "cut off" and verdict effect poor: the plate is Poor, whatever the objects
    settings = dataclasses.replace(run_settings, output=tmp_path / "out", reject_kos=True,
                                   acquisition=AcquisitionConfig(verdict_effect="poor", cut_off_margin=1.0))
    spool, metrics = Spool(tmp_path / "storage"), NodeMetrics()
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", 1)], calling_ae_title="XIQA",
                    metrics=metrics)
    worker = Worker(settings, spool, metrics, study_timeout=0, forwarder=outbox)
    header = dcmread(fixture_records[0].dicom_path, stop_before_pixels=True)
    instance = spool.store([fixture_records[0].dicom_path.read_bytes()], header.SOPInstanceUID, "study0")
    try:
        (case,) = worker.process("study0", [instance])
    finally:
        worker.close()
    assert case.ok, case.error
    assert "kos" in case.outputs
    queued = {Path(json.loads(entry.read_text())["file"]) for entry in (tmp_path / "outbox").glob("*.json")}
    assert queued == {case.outputs[kind].absolute() for kind in ("seg", "sc", "sr", "kos")}


def test_worker_holds_no_case_and_no_freed_heap_between_studies(
        run_settings, fixture_records, tmp_path: Path) -> None:
    """What grew per image in the long-lived graph was heap that the images had freed and glibc kept
    in the operator threads' arenas: between studies, a trim must find almost nothing left to return."""
    import gc
    import threading

    from xiqa.operators.case import Case
    from xiqa.service.worker import HeapKeeper, Worker, resident_bytes, return_free_heap

    between: list[tuple[int, int]] = []  # (cases alive, resident bytes a trim still returned)
    frozen: list[int] = []  # objects left out of collections

    def housekeeping() -> None:  # in the worker's thread, after each round of studies
        before = resident_bytes()
        return_free_heap()  # collects, then trims
        returned = before - resident_bytes()
        between.append((sum(isinstance(item, Case) for item in gc.get_objects()), returned))
        frozen.append(gc.get_freeze_count())
        if spool.waiting() == []:
            worker.stop()

    spool, metrics = Spool(tmp_path / "storage"), NodeMetrics()
    worker = Worker(run_settings, spool, metrics, study_timeout=0, housekeeping=housekeeping)
    worker.heap = HeapKeeper(headroom=0)  # give back after every study: then nothing may be left
    records = fixture_records[:6]
    for index, record in enumerate(records):
        header = dcmread(record.dicom_path, stop_before_pixels=True)
        worker.add(spool.store([record.dicom_path.read_bytes()], header.SOPInstanceUID, f"study{index % 3}"))
    # cases that other tests' fixtures hold in this process (a whole suite): the worker adds none
    gc.collect()
    cases_before = sum(isinstance(item, Case) for item in gc.get_objects())
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert metrics.registry.get_sample_value("xiqa_instances_processed_total") == len(records)
    cases_alive, returned = between[-1]
    assert cases_alive <= cases_before
    # without the worker's trim this was 100-300 MiB after a few images (glibc arenas)
    assert returned < 32 * 2**20, f"{returned / 2**20:.0f} MiB of freed heap was still resident"
    # the models' and frameworks' objects sit out of each study's collection (0.2 s over them),
    # and are handed back to the collector when the worker ends
    assert min(frozen) > 100_000
    assert gc.get_freeze_count() == 0


def test_heap_is_given_back_only_once_it_grew_past_the_headroom() -> None:
    """Each give-back makes the next image fault its memory in again (0.4 s a plate on a VM), so the
    worker gives the heap back after the first study and then only when it grew by the headroom."""
    from xiqa.service.worker import HeapKeeper

    resident = iter([1000, 1200, 1500, 1501, 950, 1400]).__next__
    given_back: list[int] = []
    keeper = HeapKeeper(headroom=500, resident=resident, give_back=lambda: given_back.append(1))
    # first study: give back (floor 1000); 1200 and 1500 stay; 1501 > 1000 + 500: give back (floor 950)
    decisions = [keeper.after_study() for _ in range(4)]
    assert decisions == [True, False, False, True] and len(given_back) == 2 and keeper.floor == 950
    assert keeper.after_study() is False  # 1400 <= 950 + 500


def test_worker_waits_for_the_study_timeout_after_the_last_arrival(run_settings, tmp_path: Path) -> None:
    from xiqa.service.worker import Worker

    worker = Worker(run_settings, Spool(tmp_path), NodeMetrics(), study_timeout=0.5)
    now = time.time()
    worker.add(SpooledInstance("1.2", tmp_path / "a.dcm"), arrived=now)
    worker.add(SpooledInstance("1.2", tmp_path / "b.dcm"), arrived=now + 0.4)  # resets the clock
    assert not worker.wait_for_complete(timeout=0.7)  # 0.5 after the first arrival is not enough
    assert worker.wait_for_complete(timeout=2)
    assert time.time() - now >= 0.9 - 0.01
    worker.stop()
    assert not worker.wait_for_complete()


def test_study_uid_is_read_from_received_files_in_every_uncompressed_transfer_syntax(tmp_path: Path) -> None:
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", "1.2.3"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.3.4", "1.2.9"
    dataset.PatientName, dataset.BitsAllocated, dataset.PixelData = "Doe^Jane", 8, b"\0" * 64
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                   DeflatedExplicitVRLittleEndian):
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"{syntax.name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert study_uid_of(path) == "1.2.3.4", syntax.name
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((tmp_path / f"{ExplicitVRLittleEndian.name}.dcm").read_bytes()[:150])
    assert study_uid_of(cut) == ""  # cut short: no study, no crash
    del dataset.StudyInstanceUID
    dataset.save_as(tmp_path / "none.dcm", enforce_file_format=True)
    assert study_uid_of(tmp_path / "none.dcm") == ""
    assert study_uid_of(tmp_path / "absent.dcm") == ""


def test_bulk_read_socket_serves_each_read_whole_and_in_order_from_what_one_recv_took() -> None:
    """PDU headers and bodies of several sizes, sent at once and in dribbles of odd sizes: each read
    returns exactly the bytes asked for, in order, and what came before the peer closed."""
    ours, peer = socket.socketpair()
    try:
        reader = BulkReadSocket(Association(AE(), MODE_ACCEPTOR), client_socket=ours)
        sizes = [6, 12, 6, 300_000, 6, 3 * 2**20, 6, 700_000, 6, 1]
        payload = bytes(range(256)) * (sum(sizes) // 256 + 1)
        pieces, start = [], 0
        for size in sizes:
            pieces.append(payload[start:start + size])
            start += size

        def dribble() -> None:
            sent = b"".join(pieces)
            peer.sendall(sent[:500_000])  # several reads' worth in one go
            for index in range(500_000, len(sent), 7001):
                peer.sendall(sent[index:index + 7001])
            peer.sendall(b"tail")
            peer.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=dribble)
        sender.start()
        for piece in pieces:
            assert reader.recv(len(piece)) == piece
        assert reader.recv(100) == b"tail"  # the peer closed after 4 of the 100 bytes
        assert not reader.ready or reader.recv(6) == b""
        sender.join(10)
    finally:
        ours.close()
        peer.close()


def test_large_plates_from_four_associations_at_once_are_all_stored_whole(listening, tmp_path: Path) -> None:
    """Read-ahead, data sets written as they arrive, shared folder fsyncs, under concurrency: every
    plate acknowledged is on disk, whole, and nothing is left in ``receiving``."""
    paths = large_plates(tmp_path / "plates", 12)
    listener, spool, metrics, stored = listening()
    statuses: list[list[int | None]] = [[] for _ in range(4)]
    senders = [threading.Thread(target=lambda i=i: statuses[i].extend(send(listener.port, paths[i::4])))
               for i in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    assert [status for group in statuses for status in group] == [SUCCESS] * len(paths)
    study = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    folder = spool.root / INCOMING / study
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        f"{dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm" for path in paths)  # nothing partial
    assert list((spool.root / RECEIVING).iterdir()) == []
    for path in paths:
        sent = dcmread(path)
        kept = dcmread(folder / f"{sent.SOPInstanceUID}.dcm")
        assert kept.PixelData == sent.PixelData
        assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def _associate_for(port: int, path: Path) -> tuple[Association, int]:
    """An association offering ``path``'s SOP class in Explicit VR Little Endian, and its context ID."""
    header = dcmread(path, stop_before_pixels=True)
    association = associate(port, {(str(header.SOPClassUID), ExplicitVRLittleEndian)})
    assert association.is_established
    return association, association.accepted_contexts[0].context_id


def _store_request(path: Path, with_data_set: bool = True) -> C_STORE:
    sent = dcmread(path)
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sent.SOPClassUID, sent.SOPInstanceUID
    if with_data_set:
        request.DataSet = BytesIO(encode(sent, False, True))
    return request


def test_a_connection_cut_half_way_through_a_plate_leaves_no_file_and_no_acknowledgement(
        listening, tmp_path: Path) -> None:
    listener, spool, metrics, stored = listening()
    plate = large_plates(tmp_path / "plates", 1)[0]
    association, context_id = _associate_for(listener.port, plate)
    message = C_STORE_RQ()
    message.primitive_to_message(_store_request(plate))
    pdus = []
    for primitive in message.encode_msg(context_id, association.acceptor.maximum_length):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    connection = association.dul.socket.socket
    for pdu in pdus[:len(pdus) // 2]:  # the command and half the data set, then the cable is pulled
        connection.sendall(pdu)
    wait_until(lambda: any((spool.root / RECEIVING).iterdir()), 10, "the plate arriving in receiving/")
    connection.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: not any((spool.root / RECEIVING).iterdir()), 10, "the half plate deleted")
    association.abort()
    assert stored == [] and not any((spool.root / INCOMING).iterdir())
    assert metrics.registry.get_sample_value("xiqa_instances_received_total") == 0
    assert send(listener.port, [plate]) == [SUCCESS]  # sent again whole: taken


def test_a_store_request_without_a_data_set_is_refused_as_not_understood(listening, tmp_path: Path) -> None:
    listener, spool, metrics, stored = listening()
    plate = large_plates(tmp_path / "plates", 1, shape=(64, 64))[0]
    association, context_id = _associate_for(listener.port, plate)
    try:
        # as pynetdicom's own send_c_* do: pause the association's reactor, or it takes the response
        association._reactor_checkpoint.clear()
        wait_until(lambda: association._is_paused, 10, "the association's reactor paused")
        association.dimse.send_msg(_store_request(plate, with_data_set=False), context_id)
        _, response = association.dimse.get_msg(block=True)
        association._reactor_checkpoint.set()
    finally:
        association.release()
    assert response.Status == CANNOT_UNDERSTAND
    assert stored == [] and not any((spool.root / RECEIVING).iterdir())
    assert metrics.registry.get_sample_value("xiqa_instances_refused_total", {"reason": "no data set"}) == 1
