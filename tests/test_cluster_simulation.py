"""What a cluster does to the node, on loopback: two ``xiqa serve`` replicas with their own spools behind
one address (a round-robin TCP proxy standing in for the DICOM Service), one replica killed -9 and
restarted mid-stream, a real Orthanc as the PACS.

The proxy sends each new connection to the next replica and, when that one refuses (killed, or
restarting and not yet listening), to the other, as a Service sends only to ready endpoints.  The
modality resends whatever was not acknowledged.  Each instance is sent on its own association, so
both studies are split across the replicas.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

import pytest
from orthanc import AE_TITLE, free_port, requires_orthanc, running_orthanc
from pydicom import dcmread
from pydicom.uid import generate_uid
from serve_helpers import ServeNode, send, wait_for
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import INCOMING, PROCESSED, REJECTED

#: every instance Orthanc receives, stored before or not, is one "Lua says: xiqa-received UID" log line
RECEPTION_LOG = """
function ReceivedInstanceFilter(dicom, origin, info)
  print("xiqa-received " .. dicom.SOPInstanceUID)
  return true
end
"""
STUDY_TIMEOUT = 10  # seconds: long enough that the killed replica had not started its study


class RoundRobinProxy:
    """A TCP proxy on a free loopback port: connection k goes to backend k mod n, or the next one up."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.chosen: list[int] = []  # backend port of each connection, in order
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            first, self._count = self._count, self._count + 1
            for offset in range(len(self.backends)):
                port = self.backends[(first + offset) % len(self.backends)]
                try:
                    backend = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    continue
                backend.settimeout(None)
                self.chosen.append(port)
                for source, target in ((client, backend), (backend, client)):
                    threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()
                break
            else:
                client.close()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def _study(fixture_records, folder: Path, count: int) -> list[Path]:
    """``count`` fixture radiographs re-identified as one new study (new study and SOP UIDs)."""
    study_uid = generate_uid()
    paths = []
    for index, record in enumerate(fixture_records[:count]):
        dataset = dcmread(record.dicom_path)
        dataset.StudyInstanceUID, dataset.SOPInstanceUID = study_uid, generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        paths.append(folder / f"{study_uid}-{index}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def _send_until_acknowledged(port: int, path: Path, attempts: int = 5) -> None:
    """One instance on its own association, resent like a modality until it is acknowledged."""
    for _ in range(attempts):
        try:
            if send(port, [path], calling="CR_ROOM_1") == [SUCCESS]:
                return
        except ConnectionError:
            pass
    pytest.fail(f"{path.name} was never acknowledged")


@requires_orthanc
def test_two_replicas_one_killed_mid_stream_give_one_result_set_per_instance_and_each_output_once_to_the_pacs(
        nodes, fixture_records, tmp_path: Path) -> None:
    sources_folder = tmp_path / "sources"
    sources_folder.mkdir()
    first_study, second_study = (_study(fixture_records, sources_folder, 3) for _ in range(2))
    stream = first_study + second_study
    replicas = nodes
    with running_orthanc(tmp_path / "orthanc", lua=RECEPTION_LOG) as pacs:
        ports = [free_port(), free_port()]
        forward = ("--forward", f"{AE_TITLE}@127.0.0.1:{pacs.dicom_port}")
        folders = [tmp_path / "replica-0", tmp_path / "replica-1"]
        replicas += [ServeNode(folder, port, STUDY_TIMEOUT, extra=forward, wait=False)
                     for folder, port in zip(folders, ports, strict=True)]
        for node in replicas:  # both load their models at once, on the same cores
            node.wait_ready(seconds=300)
        proxy = RoundRobinProxy(ports)
        try:
            # 0 -> replica 0, 1 -> replica 1; then replica 0 dies holding instance 0, acknowledged
            for path in stream[:2]:
                _send_until_acknowledged(proxy.port, path)
            assert list((folders[0] / "storage" / INCOMING).rglob("*.dcm")), "replica 0 processed too early"
            assert replicas[0].stop(signal.SIGKILL) == -signal.SIGKILL
            for path in stream[2:4]:  # 2 would go to replica 0: the proxy falls through to replica 1
                _send_until_acknowledged(proxy.port, path)
            # the same pod comes back on the same spool (what the StatefulSet does)
            replicas.append(ServeNode(folders[0], ports[0], STUDY_TIMEOUT, extra=forward))
            for path in stream[4:]:
                _send_until_acknowledged(proxy.port, path)
        finally:
            proxy.close()
        assert proxy.chosen == [ports[0], ports[1], ports[1], ports[1], ports[0], ports[1]]

        def reports() -> dict[str, list[Path]]:
            found: dict[str, list[Path]] = {}
            for report in (f for folder in folders for f in (folder / "out").glob("*/report.json")):
                uid = json.loads(report.read_text())["source_sop_instance_uid"]
                found.setdefault(uid, []).append(report)
            return found

        outputs = lambda: [p for folder in folders for p in (folder / "out").glob("*/*.dcm")]  # noqa: E731
        entries = lambda: [p for folder in folders  # noqa: E731
                           for p in (folder / "storage" / "outbox").glob("*.json")]
        live = replicas[1:]
        wait_for(lambda: len(reports()) == len(stream) and len(outputs()) == 3 * len(stream)
                 and not entries() and len(pacs.sop_instance_uids()) == 3 * len(stream),
                 300, "every result set in the PACS", *live)
        for node in live:
            assert node.stop(signal.SIGTERM) == 0

    sent = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in stream}
    found = reports()
    assert set(found) == sent
    for uid, sets in found.items():
        assert len(sets) == 1, f"{uid} has {len(sets)} result sets"
        assert sorted(p.name.rsplit("_", 1)[-1] for p in sets[0].parent.glob("*.dcm")) == [
            "sc.dcm", "seg.dcm", "sr.dcm"]
    # each instance ended in exactly one replica's processed/, none is waiting or rejected
    processed = [p.stem for folder in folders for p in (folder / "storage" / PROCESSED).rglob("*.dcm")]
    assert sorted(processed) == sorted(sent)
    for folder in folders:
        assert not list((folder / "storage" / INCOMING).rglob("*.dcm"))
        assert not list((folder / "storage" / REJECTED).rglob("*.dcm"))
    # the instance the killed replica had acknowledged was processed by it after its restart
    first = str(dcmread(stream[0], stop_before_pixels=True).SOPInstanceUID)
    assert (folders[0] / "out" / first / "report.json").exists()
    # the PACS received every output exactly once
    written = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in outputs()]
    log = (tmp_path / "orthanc" / "orthanc.log").read_text()
    received = [line.rsplit(" ", 1)[-1] for line in log.splitlines() if "Lua says: xiqa-received " in line]
    assert sorted(received) == sorted(written)
    # a study split across replicas still lands in one SEG, one SC and one SR series
    for study in (first_study, second_study):
        uids = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in study}
        series = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in outputs()
                  if p.parent.name in uids}
        assert len(series) == 3
