"""Shared by the ``xiqa serve`` tests: a pynetdicom SCU that sends files or echoes, and
``xiqa serve`` as a real process."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification
from waiting import wait_until


def associate(port: int, contexts: set[tuple[str, ...]], calling: str = "MODALITY", called: str = "XIQA",
              ssl_context: ssl.SSLContext | None = None) -> Association:
    """An association with the node on loopback offering ``contexts``; check ``is_established``."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for context in contexts:
        ae.add_requested_context(*context)
    tls_args = (ssl_context, "localhost") if ssl_context is not None else None
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


def send(port: int, paths: Sequence[Path], *, calling: str = "MODALITY", called: str = "XIQA",
         ssl_context: ssl.SSLContext | None = None) -> list[int | None]:
    """C-STORE each file on one association; its status, or None when it could not be sent.

    Raises ``ConnectionError`` when no association could be established.
    """
    metas = [dcmread(path, stop_before_pixels=True) for path in paths]
    contexts = {(str(m.SOPClassUID), str(m.file_meta.TransferSyntaxUID)) for m in metas}
    association = associate(port, contexts, calling, called, ssl_context)
    if not association.is_established:
        raise ConnectionError(f"no association with {called} on port {port}")
    statuses = []
    try:
        for path in paths:
            try:
                status = association.send_c_store(path)
            except ValueError:  # no accepted presentation context for this file
                statuses.append(None)
                continue
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        association.release()
    return statuses


def send_raw(port: int, paths: Sequence[Path], *, calling: str = "MODALITY", called: str = "XIQA",
             ssl_context: ssl.SSLContext | None = None) -> list[int | None]:
    """C-STORE each file as its bytes are, on one association: only its file meta is read here, so a
    damaged dataset reaches the peer as it is.  None for a file that could not be sent (file meta not
    readable, or no accepted presentation context for its SOP class and transfer syntax).

    Raises ``ConnectionError`` when no association could be established.
    """
    from pynetdicom import _config
    from pynetdicom.dsutils import split_dataset

    metas: list[Dataset | None] = []
    for path in paths:
        try:
            meta = split_dataset(path)[0]
            metas.append(meta if str(meta.get("MediaStorageSOPClassUID", "")) else None)
        except Exception:  # noqa: BLE001 - whatever the damage, this file cannot be offered
            metas.append(None)
    contexts = {(str(m.MediaStorageSOPClassUID), str(m.get("TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
                for m in metas if m is not None}
    association = associate(port, contexts, calling, called, ssl_context)
    if not association.is_established:
        raise ConnectionError(f"no association with {called} on port {port}")
    statuses: list[int | None] = []
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        for path, meta in zip(paths, metas, strict=True):
            if meta is None or not association.is_established:
                statuses.append(None)
                continue
            try:
                status = association.send_c_store(path)
            except (ValueError, AttributeError, OSError):  # no accepted context, or meta incomplete
                statuses.append(None)
                continue
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if association.is_established:
            association.release()
    return statuses


def echo(port: int, *, calling: str = "MODALITY", called: str = "XIQA",
         ssl_context: ssl.SSLContext | None = None) -> bool:
    association = associate(port, {(Verification,)}, calling, called, ssl_context)
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return status is not None and status.Status == 0


def peak_resident_bytes(pid: int) -> int:
    """Bytes of a process's peak resident set so far (``VmHWM``), 0 once it is gone.

    Its own address space's figure: ``wait4``'s ``ru_maxrss`` is kept across fork + exec, so a
    child of a big parent (pytest late in a whole suite) would report the parent's.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def large_plates(folder: Path, count: int, shape: tuple[int, int] = (1200, 1000)) -> list[Path]:
    """``count`` 16-bit CR plates of ``shape`` (2.4 MB each by default) of one study, each with its own
    SOP Instance UID and noise for pixels (so that nothing compresses them), written to ``folder``."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from xiqa.dicom_fixtures.instances import CR_IMAGE_STORAGE, InstanceVariant, PatientStudy, build_instance

    variant = InstanceVariant("plate", "CR", CR_IMAGE_STORAGE, "MONOCHROME2", 16, ExplicitVRLittleEndian,
                              "window")
    identity = PatientStudy("BULK^READ", "BULK1", "19700101", "O", generate_uid(), "20260101", "120000",
                            "BR1", "1")
    pixels = np.random.default_rng(3).random(shape, dtype=np.float32)
    dataset = build_instance(pixels, variant, identity, 1, 1, ("bulk",))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"plate{index}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def xiqa_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xiqa.cli", *args]


class ServeNode:
    """``xiqa serve`` on ``port`` with ``folder/storage`` and ``folder/out``; by default the
    constructor returns once it answers C-ECHO (``wait=False``: call ``wait_ready``)."""

    def __init__(self, folder: Path, port: int, study_timeout: float, metrics_port: int | None = None,
                 extra: tuple[str, ...] = (), wait: bool = True, ready_calling: str = "MODALITY",
                 ready_ssl: ssl.SSLContext | None = None) -> None:
        self.folder, self.port, self.metrics_port = folder, port, metrics_port
        self.ready_calling, self.ready_ssl = ready_calling, ready_ssl
        command = xiqa_command("serve", "--storage", str(folder / "storage"), "--output", str(folder / "out"),
                               "--port", str(port), "--bind", "127.0.0.1", "--study-timeout",
                               str(study_timeout), "--min-free-bytes", "0", "--device", "cpu")
        if metrics_port is not None:
            command += ["--metrics-port", str(metrics_port)]
        command += extra
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"node-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # the caller never gets this node to stop: do not leave it running
                self.stop(signal.SIGKILL)
                raise

    def wait_ready(self, seconds: float = 180) -> None:
        wait_until(lambda: echo(self.port, calling=self.ready_calling, ssl_context=self.ready_ssl), seconds,
                   "xiqa serve answering C-ECHO", processes=[self.process], log=self.text, interval=0.5)

    def text(self) -> str:
        return self.log_path.read_text()

    def metrics_text(self) -> str:
        address = f"http://127.0.0.1:{self.metrics_port}/metrics"
        # 30 s: on two loaded cores the exporter's thread waits seconds for the GIL while a study is
        # in the graph (a 5 s limit failed the 1,000-instance load test mid-run, with nothing lost)
        return urllib.request.urlopen(address, timeout=30).read().decode()

    def wait_for(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        wait_for(condition, seconds, what, self)

    def metric(self, name: str) -> float:
        for line in self.metrics_text().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self, how: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(how)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.log.close()


def wait_for(condition: Callable[[], bool], seconds: float, what: str, *nodes: ServeNode) -> None:
    """Poll ``condition`` until true; fail with the nodes' logs when one exits or time runs out."""
    wait_until(condition, seconds, what, processes=[node.process for node in nodes],
               log=lambda: "\n".join(node.text()[-3000:] for node in nodes), interval=0.5)
