"""The outbox against real peers: the Debian Orthanc and an in-process pynetdicom storage SCP.

Destinations that are down are free loopback ports nobody listens on; they come
up later on the same port.  The kill -9 test queues in a child process and
kills it mid-retry.  Delays are a few hundredths of a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from orthanc import AE_TITLE, free_port, requires_orthanc, running_orthanc
from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from xiqa.dicom_fixtures.generate import write_fixture_set
from xiqa.service.metrics import NodeMetrics
from xiqa.service.outbox import FAILED, Outbox
from xiqa.service.settings import Destination

CALLING = "XIQATEST"
DELAY = 0.05


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """CR explicit VR, DX JPEG 2000 and CR implicit VR: two SOP classes, three transfer syntaxes."""
    folder = tmp_path_factory.mktemp("outbox_sources")
    write_fixture_set(folder, count=3, seed=5, size_range=(300, 400))
    return sorted((folder / "dicom").rglob("*.dcm"))


@pytest.fixture
def files(sources: list[Path], tmp_path: Path) -> list[Path]:
    """Copies the test may delete or break."""
    (tmp_path / "out").mkdir()
    return [Path(shutil.copy(source, tmp_path / "out" / source.name)) for source in sources]


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def make_outbox(tmp_path: Path, metrics: NodeMetrics) -> Iterator[Callable[..., Outbox]]:
    """Outboxes on ``tmp_path/outbox`` (a short delay by default), all stopped at the end."""
    made: list[Outbox] = []

    def make(destinations: list[Destination], **options) -> Outbox:
        options.setdefault("retry_delay", DELAY)
        made.append(Outbox(tmp_path / "outbox", destinations, calling_ae_title=CALLING,
                           metrics=metrics, **options))
        return made[-1]

    yield make
    for outbox in made:
        outbox.stop()


class StoreSCP:
    """A pynetdicom storage SCP that records associations and SOP Instance UIDs, answers scripted statuses."""

    def __init__(self, port: int, statuses: dict[str, list[int]]) -> None:
        self.port = port
        self.associations = 0
        self.received: list[str] = []
        self._statuses = statuses  # SOP Instance UID -> statuses to answer first, in order
        ae = AE(ae_title="STORESCP")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer = ae.start_server(
            ("127.0.0.1", port), block=False,
            evt_handlers=[(evt.EVT_ACCEPTED, self._accepted), (evt.EVT_C_STORE, self._store)])

    def _accepted(self, event: Event) -> None:
        self.associations += 1

    def _store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append(uid)
        scripted = self._statuses.get(uid)
        return scripted.pop(0) if scripted else 0x0000

    def shutdown(self) -> None:
        self._server.shutdown()


@pytest.fixture
def store_scp() -> Iterator[Callable[..., StoreSCP]]:
    started: list[StoreSCP] = []

    def start(port: int | None = None, statuses: dict[str, list[int]] | None = None) -> StoreSCP:
        started.append(StoreSCP(port or free_port(), statuses or {}))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def entries(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def value(metrics: NodeMetrics, name: str, destination: Destination | None = None) -> float:
    labels = {} if destination is None else {"destination": str(destination)}
    return metrics.registry.get_sample_value(name, labels) or 0.0


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@requires_orthanc
def test_every_file_reaches_every_destination_and_entries_are_on_disk_first(
        files: list[Path], tmp_path: Path, metrics: NodeMetrics, make_outbox: Callable[..., Outbox],
        store_scp: Callable[..., StoreSCP]) -> None:
    scp = store_scp()
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        destinations = [Destination(AE_TITLE, "127.0.0.1", orthanc.dicom_port),
                        Destination("STORESCP", "127.0.0.1", scp.port)]
        outbox = make_outbox(destinations)
        outbox.enqueue(files)  # not started yet: what enqueue returned on must already be on disk
        queued = entries(tmp_path / "outbox")
        expected = [(str(file.absolute()), str(destination), 0)
                    for file in files for destination in destinations]
        assert sorted((entry["file"], entry["destination"], entry["attempts"]) for entry in queued) == \
            sorted(expected)
        assert value(metrics, "xiqa_outbox_depth") == 6

        outbox.start()
        assert outbox.wait_empty(20)
        uids = {uid_of(file) for file in files}
        assert orthanc.sop_instance_uids() == uids
        assert sorted(scp.received) == sorted(uids) and scp.associations == 1
    assert entries(tmp_path / "outbox") == []
    assert not any((tmp_path / "outbox" / FAILED).iterdir())
    assert value(metrics, "xiqa_outbox_depth") == 0
    for destination in destinations:
        assert value(metrics, "xiqa_forwarded_total", destination) == 3
        assert value(metrics, "xiqa_forward_failures_total", destination) == 0


def test_a_destination_that_is_down_gets_the_files_once_it_is_up(
        files: list[Path], tmp_path: Path, metrics: NodeMetrics, make_outbox: Callable[..., Outbox],
        store_scp: Callable[..., StoreSCP]) -> None:
    destination = Destination("STORESCP", "127.0.0.1", free_port())
    outbox = make_outbox([destination], retries=100)
    outbox.enqueue(files[:2])
    outbox.start()
    # a refused connection costs every entry of the batch one attempt
    assert until(lambda: value(metrics, "xiqa_forward_failures_total", destination) >= 4)
    queued = entries(tmp_path / "outbox")
    assert len(queued) == 2 and all(entry["attempts"] >= 1 for entry in queued)
    assert all(entry["next_attempt"] > 0 for entry in queued)
    assert value(metrics, "xiqa_outbox_depth") == 2
    assert value(metrics, "xiqa_forwarded_total", destination) == 0

    scp = store_scp(destination.port)
    assert outbox.wait_empty(10)
    assert sorted(scp.received) == sorted(uid_of(file) for file in files[:2])
    assert scp.associations == 1  # entries that failed together retry together
    assert entries(tmp_path / "outbox") == []
    assert value(metrics, "xiqa_forwarded_total", destination) == 2
    assert value(metrics, "xiqa_forward_given_up_total", destination) == 0


def test_a_failure_status_costs_only_its_own_file_an_attempt_and_warnings_count_as_delivered(
        files: list[Path], metrics: NodeMetrics, make_outbox: Callable[..., Outbox],
        store_scp: Callable[..., StoreSCP]) -> None:
    refused, coerced, stored = (uid_of(file) for file in files)
    scp = store_scp(statuses={refused: [0xA700], coerced: [0xB000]})
    destination = Destination("STORESCP", "127.0.0.1", scp.port)
    outbox = make_outbox([destination])
    outbox.enqueue(files)
    outbox.start()
    assert outbox.wait_empty(10)
    assert sorted(scp.received) == sorted([refused, refused, coerced, stored])
    assert scp.associations == 2  # the second one carries the refused file only
    assert value(metrics, "xiqa_forward_failures_total", destination) == 1
    assert value(metrics, "xiqa_forwarded_total", destination) == 3


_CHILD = """
import sys, time
from pathlib import Path
from xiqa.service.metrics import NodeMetrics
from xiqa.service.outbox import Outbox
from xiqa.service.settings import Destination

outbox = Outbox(Path(sys.argv[1]), [Destination.parse(sys.argv[2])], calling_ae_title="XIQATEST",
                metrics=NodeMetrics(), retries=100, retry_delay=0.05)
outbox.enqueue([Path(name) for name in sys.argv[3:]])
outbox.start()
print("queued", flush=True)
time.sleep(600)
"""


@requires_orthanc
def test_entries_a_killed_process_left_are_sent_after_the_restart(
        files: list[Path], tmp_path: Path, metrics: NodeMetrics,
        make_outbox: Callable[..., Outbox]) -> None:
    destination = Destination(AE_TITLE, "127.0.0.1", free_port())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "outbox"), str(destination),
                              *map(str, files)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "queued"
        assert until(lambda: all(entry["attempts"] >= 1 for entry in entries(tmp_path / "outbox")))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert len(entries(tmp_path / "outbox")) == 3
    (tmp_path / "outbox" / "garbage.json").write_text("{")  # not ours: set aside, not sent
    (tmp_path / "outbox" / ".x.json.abc.part").write_text("{")  # a write cut short: removed

    with running_orthanc(tmp_path / "orthanc", dicom_port=destination.port) as orthanc:
        outbox = make_outbox([destination])
        assert value(metrics, "xiqa_outbox_depth") == 3  # known before the thread runs
        outbox.start()
        assert outbox.wait_empty(20)
        assert orthanc.sop_instance_uids() == {uid_of(file) for file in files}
    assert sorted(path.name for path in (tmp_path / "outbox").iterdir()) == [FAILED]
    assert [path.name for path in (tmp_path / "outbox" / FAILED).iterdir()] == ["garbage.json"]
    assert value(metrics, "xiqa_forwarded_total", destination) == 3


def test_an_entry_out_of_retries_moves_to_failed_with_one_log_line(
        files: list[Path], tmp_path: Path, metrics: NodeMetrics, make_outbox: Callable[..., Outbox],
        caplog: pytest.LogCaptureFixture) -> None:
    destination = Destination("NOBODY", "127.0.0.1", free_port())
    outbox = make_outbox([destination], retries=1)  # the first attempt and one retry
    outbox.enqueue(files[:1])
    with caplog.at_level(logging.INFO, logger="xiqa.service.outbox"):
        outbox.start()
        assert outbox.wait_empty(10)
    assert entries(tmp_path / "outbox") == []
    [failed] = entries(tmp_path / "outbox" / FAILED)
    assert failed["attempts"] == 2 and failed["file"] == str(files[0].absolute())
    assert "not reachable" in failed["error"]
    assert value(metrics, "xiqa_forward_given_up_total", destination) == 1
    assert value(metrics, "xiqa_forward_failures_total", destination) == 2
    assert value(metrics, "xiqa_outbox_depth") == 0
    [line] = [record.getMessage() for record in caplog.records
              if record.name == "xiqa.service.outbox" and record.levelno == logging.ERROR]
    assert files[0].name in line and str(destination) in line and str(files[0].parent) not in line


def test_a_vanished_or_broken_file_fails_at_once_and_the_others_are_delivered(
        files: list[Path], tmp_path: Path, metrics: NodeMetrics, make_outbox: Callable[..., Outbox],
        store_scp: Callable[..., StoreSCP]) -> None:
    scp = store_scp()
    destination = Destination("STORESCP", "127.0.0.1", scp.port)
    broken = tmp_path / "out" / "broken.dcm"
    broken.write_bytes(b"not DICOM at all")
    outbox = make_outbox([destination], retries=100)
    outbox.enqueue([*files, broken])
    files[1].unlink()
    outbox.start()
    assert outbox.wait_empty(10)
    assert sorted(scp.received) == sorted(uid_of(file) for file in (files[0], files[2]))
    failed = {Path(entry["file"]).name: entry for entry in entries(tmp_path / "outbox" / FAILED)}
    assert set(failed) == {files[1].name, broken.name}
    assert failed[files[1].name]["error"] == "file missing"
    assert failed[broken.name]["error"].startswith("file not readable as DICOM")
    assert all(entry["attempts"] == 1 for entry in failed.values())
    assert value(metrics, "xiqa_forward_given_up_total", destination) == 2
    assert value(metrics, "xiqa_forwarded_total", destination) == 2
