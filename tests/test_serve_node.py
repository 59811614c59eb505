"""``xiqa serve`` as a real process: kill -9 loses nothing acknowledged, a restart processes nothing twice,
``xiqa health`` tells up from down, SIGTERM ends it cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc import AE_TITLE, free_port, requires_orthanc, running_orthanc
from pydicom import dcmread
from pydicom.uid import generate_uid
from serve_helpers import NodeProcess, send, xiqa_command
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import INCOMING, REJECTED


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        if node.process.poll() is None:
            node.stop(signal.SIGKILL)


def test_node_survives_kill_9_and_never_processes_twice(nodes, fixture_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    good = sorted((fixture_dir / "dicom").rglob("*.dcm"))
    broken = tmp_path / "broken.dcm"
    dataset = dcmread(good[0])
    dataset.SOPInstanceUID = generate_uid()
    dataset.Rows = dataset.Rows * 2  # pixel data too short for the header: stored, then rejected
    dataset.save_as(broken)

    # 1. acknowledged, then killed before the study timeout: nothing processed yet
    first = NodeProcess(tmp_path, port, study_timeout=3600)
    nodes.append(first)
    assert send(port, [*good, broken]) == [SUCCESS] * (len(good) + 1)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(list((tmp_path / "storage" / INCOMING).rglob("*.dcm"))) == len(good) + 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    # 2. a restart processes what the killed node acknowledged
    second = NodeProcess(tmp_path, port, study_timeout=1)
    nodes.append(second)
    reports = lambda: list((tmp_path / "out").glob("*/report.json"))  # noqa: E731
    second.wait_for(lambda: len(reports()) == len(good) and not any(
        (tmp_path / "storage" / INCOMING).rglob("*.dcm")), 240, "outputs for every instance")
    for report in reports():
        assert {p.name.rsplit("_", 1)[-1] for p in report.parent.glob("*.dcm")} == {
            "seg.dcm", "sc.dcm", "sr.dcm"}
    reasons = list((tmp_path / "storage" / REJECTED).rglob("*.reason.txt"))
    assert len(reasons) == 1 and "pixel" in reasons[0].read_text().lower()
    health = subprocess.run(xiqa_command("health", "--port", str(port)), capture_output=True, text=True,
                            timeout=60)
    assert health.returncode == 0, health.stderr
    assert second.stop(signal.SIGTERM) == 0
    assert "xiqa serve stopped" in second.text()
    down = subprocess.run(xiqa_command("health", "--port", str(port), "--timeout", "2"), capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 1 and "unhealthy" in down.stderr

    # 3. a third start, and the same instance sent again: nothing is processed twice
    stamps = {report: report.stat().st_mtime_ns for report in reports()}
    metrics_port = free_port()
    third = NodeProcess(tmp_path, port, study_timeout=1, metrics_port=metrics_port)
    nodes.append(third)
    assert send(port, [good[0]]) == [SUCCESS]
    time.sleep(3)
    assert third.metric("xiqa_instances_received_total") == 1
    assert third.metric("xiqa_instances_processed_total") == 0
    assert {report: report.stat().st_mtime_ns for report in reports()} == stamps
    assert third.stop(signal.SIGTERM) == 0
    for node in (first, second, third):  # no patient identity in any log line
        text = node.text()
        for record in (dataset, dcmread(good[1])):
            for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
                if str(record.get(keyword, "") or ""):
                    assert str(record.get(keyword)) not in text, keyword


def test_serve_usage_errors_exit_2(tmp_path: Path) -> None:
    bad = subprocess.run(xiqa_command("serve", "--storage", str(tmp_path), "--output", str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "xiqa serve: error: command line: storage and output must be different folders")


@requires_orthanc
def test_node_forwards_every_output_to_a_pacs(nodes, fixture_records, tmp_path: Path) -> None:
    port = free_port()
    sources = [record.dicom_path for record in fixture_records[:2]]
    with running_orthanc(tmp_path / "orthanc") as pacs:
        node = NodeProcess(tmp_path, port, study_timeout=0.5,
                           extra=("--forward", f"{AE_TITLE}@127.0.0.1:{pacs.dicom_port}"))
        nodes.append(node)
        assert send(port, sources) == [SUCCESS, SUCCESS]
        written = lambda: {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)  # noqa: E731
                           for p in (tmp_path / "out").glob("*/*.dcm")}
        entries = lambda: list((tmp_path / "storage" / "outbox").glob("*.json"))  # noqa: E731
        # the entry goes once the PACS has answered, a moment after it holds the file
        node.wait_for(lambda: len(written()) == 3 * len(sources) and pacs.sop_instance_uids() == written()
                      and not entries(), 240, "the outputs in the PACS and an empty outbox")
        assert node.stop(signal.SIGTERM) == 0
