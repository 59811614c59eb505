"""A running node under load (four concurrent associations, dcmtk storescu and pynetdicom, processing on)
and killed with SIGKILL at random points of a stream while it forwards to a real Orthanc."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from orthanc import AE_TITLE, free_port, requires_orthanc, running_orthanc
from pydicom import dcmread
from pynetdicom import AE
from serve_helpers import ServeNode, peak_resident_bytes, send
from support import copies, phi_hits
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import INCOMING

pytestmark = pytest.mark.reliability

OUTPUT_FILES = ("report.json", "report.png")
_PROCESSED_LINE = re.compile(r"(?P<sop>[0-9.]+)\.dcm: Q_img ")


def _sop(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def result_sets(output: Path) -> dict[str, int]:
    """Source SOP Instance UID -> number of complete result sets (report.json, report.png, SEG, SC, SR)."""
    found = {}
    for folder in output.iterdir() if output.exists() else ():
        kinds = {p.name.rsplit("_", 1)[-1] for p in folder.glob("*.dcm")}
        complete = all((folder / name).exists() for name in OUTPUT_FILES) and kinds == {
            "seg.dcm", "sc.dcm", "sr.dcm"}
        found[folder.name] = int(complete)
    return found


def _compressed(path: Path) -> bool:
    return dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed


def _world_accessible(*roots: Path) -> list[str]:
    return [str(path) for root in roots for path in [root, *root.rglob("*")]
            if path.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH)]


def _storescu(port: int, paths: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(["storescu", "-R", "-aec", "XIQA", "-aet", "STORESCU", "127.0.0.1", str(port),
                             *map(str, paths)], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_load_from_four_concurrent_associations_with_processing_on(canary_sources, scale, figures, tmp_path):
    instances = copies(canary_sources, tmp_path / "load", scale.load_instances, scale.load_studies)
    port, metrics_port = free_port(), free_port()
    node = ServeNode(tmp_path, port, study_timeout=2, metrics_port=metrics_port)
    samples: list[tuple[float, float]] = []
    try:
        started = time.monotonic()
        dcmtk = shutil.which("storescu") is not None
        # storescu proposes uncompressed syntaxes (and one codec at most): it takes the uncompressed
        # instances, pynetdicom the rest; without dcmtk pynetdicom sends everything
        uncompressed = [p for p in instances if not _compressed(p)] if dcmtk else []
        rest = [p for p in instances if p not in set(uncompressed)]
        shares = [uncompressed[0::2], uncompressed[1::2], rest[0::2], rest[1::2]] if dcmtk else [
            instances[i::4] for i in range(4)]
        senders = [_storescu(port, shares[i]) for i in range(2)] if dcmtk else []
        statuses: list[list[int | None]] = []
        threads = [threading.Thread(target=lambda share=share: statuses.append(send(port, share)))
                   for share in shares[len(senders):]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=1800)
        for sender in senders:
            sender.wait(timeout=1800)
        received_s = time.monotonic() - started
        assert all(sender.returncode == 0 for sender in senders), [s.stderr.read() for s in senders]
        assert all(status == SUCCESS for batch in statuses for status in batch)
        assert node.metric("xiqa_instances_received_total") == len(instances)

        def done() -> bool:
            samples.append((time.monotonic() - started, node.metric("xiqa_queue_depth")))
            return node.metric("xiqa_instances_processed_total") + node.metric(
                "xiqa_instances_rejected_total") >= len(instances)

        node.wait_for(done, 120 + 30 * len(instances), "every instance processed")
        processed_s = time.monotonic() - started
        peak_rss = peak_resident_bytes(node.process.pid)  # VmHWM: never below the current RSS
        metrics_text = node.metrics_text()
        assert node.stop() == 0
    finally:
        node.stop(signal.SIGKILL)
    sets = result_sets(tmp_path / "out")
    sent = {_sop(path) for path in instances}
    processed_lines = Counter(m["sop"] for m in _PROCESSED_LINE.finditer(node.text()))
    lost = len(sent - {sop for sop, complete in sets.items() if complete})
    duplicated = sum(count - 1 for count in processed_lines.values() if count > 1)
    hits = phi_hits([tmp_path / "storage", tmp_path / "out", node.log_path], texts=[metrics_text])
    exposed = _world_accessible(tmp_path / "storage", tmp_path / "out")
    figures["load"] = {
        "instances": len(instances), "associations": 4, "storescu associations": len(senders),
        "studies": scale.load_studies, "result sets": sum(sets.values()), "lost": lost,
        "duplicated": duplicated, "received inst/s": round(len(instances) / received_s, 2),
        "processed images/min": round(60 * len(instances) / processed_s, 1), "peak rss bytes": peak_rss,
        "max queue depth": max((depth for _, depth in samples), default=0),
        "queue depth over time": samples[:: max(1, len(samples) // 20)], "phi_hits": len(hits),
        "world-readable files": len(exposed)}
    assert lost == 0 and duplicated == 0 and sum(sets.values()) == len(instances)
    assert set(processed_lines) == sent and not list((tmp_path / "storage" / INCOMING).rglob("*.dcm"))
    assert hits == []
    assert exposed == []


class _Stream:
    """Sends instances in small batches, one association each, and remembers what was acknowledged."""

    def __init__(self, port: int, paths: list[Path], batch: int = 3) -> None:
        self.port, self.batches = port, [paths[i:i + batch] for i in range(0, len(paths), batch)]
        self.acknowledged: set[Path] = set()
        self.unacknowledged: set[Path] = set()

    def send_batch(self, paths: list[Path]) -> None:
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for path in paths:
            meta = dcmread(path, stop_before_pixels=True)
            ae.add_requested_context(str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID))
        association = ae.associate("127.0.0.1", self.port, ae_title="XIQA")
        for path in paths:
            status = None
            if association.is_established:
                try:
                    status = association.send_c_store(path).get("Status")
                except (RuntimeError, ValueError, OSError):
                    status = None
            (self.acknowledged if status == SUCCESS else self.unacknowledged).add(path)
        if association.is_established:
            association.release()


@requires_orthanc
def test_kill_9_at_random_points_loses_nothing_acknowledged(canary_sources, scale, figures, tmp_path):
    rng = random.Random(13)
    instances = copies(canary_sources, tmp_path / "stream", scale.crash_instances, studies=3)
    port = free_port()
    kills: list[str] = []
    with running_orthanc(tmp_path / "orthanc") as pacs:
        forward = ("--forward", f"{AE_TITLE}@127.0.0.1:{pacs.dicom_port}")
        start = lambda: ServeNode(tmp_path, port, study_timeout=1, extra=forward)  # noqa: E731
        node, nodes = start(), []
        stream = _Stream(port, instances)
        storage = tmp_path / "storage"
        phases = ["mid-receive", "mid-graph", "mid-forward"]
        try:
            for batch in stream.batches:
                phase = phases[len(kills) % 3] if len(kills) < scale.kills else None
                if phase == "mid-receive":
                    sender = threading.Thread(target=stream.send_batch, args=(batch,))
                    sender.start()
                    time.sleep(rng.uniform(0.0, 0.4))
                else:
                    stream.send_batch(batch)
                    sender = None
                if phase == "mid-graph":  # the study is complete and its graph runs
                    time.sleep(1.0 + rng.uniform(0.2, 2.0))
                elif phase == "mid-forward":
                    deadline = time.monotonic() + 120
                    while not list((storage / "outbox").glob("*.json")) and time.monotonic() < deadline:
                        time.sleep(0.1)
                    time.sleep(rng.uniform(0.0, 0.3))
                if phase is not None:
                    node.stop(signal.SIGKILL)
                    kills.append(phase)
                    if sender is not None:
                        sender.join(timeout=120)
                    nodes.append(node)
                    node = start()
            node.wait_for(lambda: not list((storage / INCOMING).rglob("*.dcm"))
                          and not list((storage / "outbox").glob("*.json")), 300 + 20 * len(instances),
                          "every instance processed and forwarded")
            assert node.stop() == 0
        finally:
            node.stop(signal.SIGKILL)
        nodes.append(node)
        sets = result_sets(tmp_path / "out")
        outputs = {_sop(path) for path in (tmp_path / "out").glob("*/*.dcm")}
        in_pacs = pacs.sop_instance_uids()
        pacs_count = len(pacs.get("/instances"))
    acknowledged = {_sop(path) for path in stream.acknowledged}
    unacknowledged = {_sop(path) for path in stream.unacknowledged}
    complete = {sop for sop, done in sets.items() if done}
    lost = len(acknowledged - complete)
    hits = phi_hits([storage, tmp_path / "out", *(n.log_path for n in nodes)])
    figures["crash"] = {
        "kills": len(kills), "phases": dict(Counter(kills)), "instances sent": len(instances),
        "acknowledged": len(acknowledged), "unacknowledged": len(unacknowledged),
        "unacknowledged missing": len(unacknowledged - complete), "lost": lost,
        "result sets": len(complete), "orthanc instances": pacs_count,
        "forwarded once": int(in_pacs == outputs and pacs_count == len(outputs)), "phi_hits": len(hits)}
    assert len(kills) == scale.kills
    assert lost == 0
    assert complete <= acknowledged | unacknowledged and len(complete) == len(sets)
    assert in_pacs == outputs and pacs_count == 3 * len(complete)  # each output exactly once in the PACS
    assert not list((storage / "outbox" / "failed").glob("*.json"))
    assert hits == []
