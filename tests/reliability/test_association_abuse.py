"""Association abuse against a real listener on loopback: each answered with the right status, nothing
unacknowledged kept, and C-ECHO (what ``xiqa health`` sends) answered after every one."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from serve_helpers import echo, send
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import INCOMING

pytestmark = pytest.mark.reliability

TIMEOUTS = {"acse_timeout": 2.0, "dimse_timeout": 2.0, "network_timeout": 2.0}


def _association(port: int, sop_class: str, calling: str = "MODALITY", handlers=()):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(sop_class)
    return ae.associate("127.0.0.1", port, ae_title="XIQA", evt_handlers=list(handlers))


#: A-ABORT PDU, source: service user
A_ABORT = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0)


def _abort_after(pdus: int):
    """A handler that, once ``pdus`` P-DATA PDUs went out, writes an A-ABORT straight onto the socket
    (pynetdicom would queue its own behind the rest of the data) and closes the connection."""
    sent = []

    def on_sent(event) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            sent.append(1)
            if len(sent) == pdus:
                raw = event.assoc.dul.socket.socket
                raw.sendall(A_ABORT)
                raw.shutdown(socket.SHUT_RDWR)

    return evt.EVT_PDU_SENT, on_sent


def test_abuse_is_answered_and_the_node_stays_healthy(listening, canary_sources, tmp_path, figures):
    listener, spool, metrics, stored = listening(allowed_ae_titles=("MODALITY", "XIQA-HEALTH"),
                                                 max_associations=2, **TIMEOUTS)
    port, survived = listener.port, []

    def healthy(what: str) -> None:
        assert echo(port, calling="XIQA-HEALTH"), f"no C-ECHO answer after {what}"
        survived.append(what)

    # unknown calling AE title: A-ASSOCIATE-RJ, permanent, "calling AE title not recognised"
    rejected = _association(port, "1.2.840.10008.1.1", calling="INTRUDER")
    assert rejected.is_rejected
    healthy("unknown calling AE")

    # an unsupported SOP class: its presentation context is refused, the radiograph beside it stored
    computed_tomography = Path(get_testdata_file("CT_small.dcm"))
    assert send(port, [computed_tomography, canary_sources[0]]) == [None, SUCCESS]
    healthy("unsupported SOP class")

    # aborted half-way through a large instance: nothing of it is kept
    big = dcmread(canary_sources[0])
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big.Rows, big.Columns = 4000, 4000
    big.PixelData = np.zeros((4000, 4000), np.uint16).tobytes()
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path)
    association = _association(port, str(big.SOPClassUID), handlers=[_abort_after(20)])
    try:
        association.send_c_store(big_path)
    except (RuntimeError, ValueError, OSError):
        pass  # sending on an aborted association
    time.sleep(1.0)
    assert len(stored) == 1  # the radiograph above, nothing of the aborted one
    assert [p.suffix for p in (spool.root / INCOMING).rglob("*") if p.is_file()] == [".dcm"]
    assert big.SOPInstanceUID not in {instance.path.stem for instance in stored}
    healthy("abort mid-transfer")

    # an idle association is aborted after the network timeout
    idle = _association(port, "1.2.840.10008.1.1")
    assert idle.is_established
    deadline = time.monotonic() + 10
    while idle.is_established and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not idle.is_established and time.monotonic() < deadline
    healthy("idle association")

    # a connection that never sends an A-ASSOCIATE-RQ is closed after the ACSE timeout
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as silent:
        assert silent.recv(1024) == b""  # closed by the node
    assert time.monotonic() - started < 10
    healthy("silent connection")

    # a P-DATA PDU that declares 4 GB and sends 1 KB: closed on the socket timeout, memory untouched
    liar = _association(port, "1.2.840.10008.1.1")
    assert liar.is_established
    raw = liar.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 1024)
    deadline = time.monotonic() + 15
    while liar.is_established and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not liar.is_established
    healthy("oversized PDU")

    # more simultaneous associations than the limit: the extra one is rejected, transient.  The
    # node may still be closing the connections above (slow on a loaded machine): the two within
    # the limit get up to 10 s to be admitted, then the third must be refused at once.
    deadline = time.monotonic() + 10
    admitted = []
    while len(admitted) < 2 and time.monotonic() < deadline:
        attempt = _association(port, "1.2.840.10008.1.1")
        if attempt.is_established:
            admitted.append(attempt)
        else:
            time.sleep(0.5)
    assert len(admitted) == 2, "two associations within the limit were not admitted in 10 s"
    first, second = admitted
    third = _association(port, "1.2.840.10008.1.1")
    assert third.is_rejected
    first.release()
    second.release()
    time.sleep(0.5)
    healthy("too many associations")

    assert metrics.registry.get_sample_value("xiqa_instances_received_total") == 1
    figures["association abuse"] = {"faults survived": len(survived), "faults": survived}
