"""The SCP: C-ECHO, and C-STORE of radiographs into the spool, acknowledged only once on disk.

Each handler is small: ``handle_store`` turns one request into one spool write
and one status.  Who may associate is decided before any DICOM is read: the
peer address by ``AllowListServer.verify_request`` (the connection is simply
closed), the calling AE title by pynetdicom's own association rejection.

Every connection gets a socket timeout (the network timeout) and, with TLS,
its handshake runs in that connection's own thread: a caller that goes silent
holds one association slot until it times out, never the port.  Each
connection ends in one audit line (``service.audit``).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from typing import Any

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from xiqa.operators.loader import SUPPORTED_SOP_CLASSES

from .audit import AuditTrail
from .metrics import NodeMetrics
from .settings import ServeSettings
from .spool import Spool, SpooledInstance, StorageFull

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
#: what the loader can decode (pylibjpeg, OpenJPEG, RLE, GDCM)
STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
)


def study_uid_of(dataset: bytes, transfer_syntax: UID) -> str:
    """The Study Instance UID of an encoded dataset (no file meta), parsed only up to that element."""
    try:
        if transfer_syntax.is_deflated:
            dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
        found = read_dataset(io.BytesIO(dataset), transfer_syntax.is_implicit_VR,
                             transfer_syntax.is_little_endian, specific_tags=[STUDY_INSTANCE_UID],
                             stop_when=lambda tag, vr, length: tag > STUDY_INSTANCE_UID)
        return str(found.get("StudyInstanceUID", "") or "")
    except (ValueError, EOFError, OSError, zlib.error):
        return ""  # spooled under "no study"; the loader gives the reason


def handle_store(event: evt.Event, spool: Spool, metrics: NodeMetrics,
                 on_stored: Callable[[SpooledInstance], None], audit: AuditTrail) -> int:
    """Spool one C-STORE request; Success only once the instance is durably on disk.

    A full disk, and any other storage error (a read-only or vanished spool), answers "out of
    resources": the caller may send it again later, and nothing of it is kept.
    """
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
    dataset = event.request.DataSet.getvalue()
    study = study_uid_of(dataset, event.context.transfer_syntax)
    try:
        stored = spool.store((file_header(event.file_meta), dataset), sop_instance_uid, study)
    except (StorageFull, OSError) as error:
        full = isinstance(error, StorageFull)
        reason = "storage full" if full else "storage error"
        metrics.instances_refused.labels(reason=reason).inc()
        audit.refused(event.assoc, reason)
        logger.error("refused %s from %s: %s (%s)", sop_instance_uid, event.assoc.requestor.ae_title,
                     reason, error if full else error.strerror or type(error).__name__)
        return OUT_OF_RESOURCES
    metrics.instances_received.inc()
    audit.stored(event.assoc, study)
    if stored is None:
        logger.info("%s was processed before; acknowledged, not processed again", sop_instance_uid)
    else:
        on_stored(stored)
    return SUCCESS


def file_header(file_meta: Dataset) -> bytes:
    """Preamble, prefix and file meta: what precedes the dataset in a DICOM file."""
    return b"\x00" * 128 + b"DICM" + encode_file_meta(file_meta)


class BulkReadSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU in as few ``recv`` calls as the kernel allows.

    pynetdicom reads every PDU 4 KiB at a time into a growing bytearray: for a 7 MB plate
    that is some 1,800 calls, each taking the GIL back from the other associations' threads.
    Here one buffer of the PDU's length is filled in place (``recv_into``), usually in a
    handful of calls.  Same contract: the bytes read, fewer only when the peer closed.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            count = self.socket.recv_into(view[read:])
            if not count:  # the peer closed: what came so far
                return buffer[:read]
            read += count
        return buffer


class AllowListServer(ThreadedAssociationServer):
    """Closes connections from addresses not on the allow-list before any association starts; gives
    every connection a socket timeout and leaves its TLS handshake to the connection's own thread."""

    allowed_hosts: frozenset[str] = frozenset()
    socket_timeout: float = 60.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        client.settimeout(self.socket_timeout)
        if self.ssl_context is not None:  # pynetdicom would handshake here, in the accepting thread
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self.allowed_hosts and host not in self.allowed_hosts:
            port = client_address[1] if isinstance(client_address, tuple) else "?"
            logging.getLogger("xiqa.audit").info(
                "audit: unknown caller at %s:%s: connection closed (address not on the allowed host list)",
                host, port)
            return False
        return True


def tls_context(settings: ServeSettings) -> ssl.SSLContext | None:
    """Server-side TLS from the settings; with a CA bundle, callers must present a certificate."""
    if settings.tls_certificate is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_certificate), str(settings.tls_key))
    if settings.tls_ca is not None:
        context.load_verify_locations(cafile=str(settings.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def forward_tls_context(settings: ServeSettings) -> ssl.SSLContext | None:
    """Client-side TLS for forwarding: the destination's certificate and host name are checked."""
    if not settings.forward_tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.forward_tls_ca) if settings.forward_tls_ca else None)
    if settings.forward_tls_certificate is not None:
        context.load_cert_chain(str(settings.forward_tls_certificate), str(settings.forward_tls_key))
    return context


class Listener:
    """The node's SCP, listening in background threads until ``stop``."""

    def __init__(self, settings: ServeSettings, spool: Spool, metrics: NodeMetrics,
                 on_stored: Callable[[SpooledInstance], None]) -> None:
        self.settings = settings
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.maximum_associations = settings.max_associations
        ae.acse_timeout, ae.dimse_timeout = settings.acse_timeout, settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.require_calling_aet = list(settings.allowed_ae_titles)
        ae.add_supported_context(Verification)
        for sop_class in SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self.audit = AuditTrail(settings.allowed_ae_titles)
        self._handlers = [
            (evt.EVT_C_STORE, handle_store, [spool, metrics, on_stored, self.audit]),
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_CONN_OPEN, self._opened),
            *self.audit.handlers(),
        ]
        self._server: AllowListServer | None = None
        self._thread: threading.Thread | None = None

    def _echo(self, event: evt.Event) -> int:
        self.audit.echoed(event.assoc)
        return SUCCESS

    def _opened(self, event: evt.Event) -> None:
        """The A-ASSOCIATE request must come within the ACSE timeout (pynetdicom's ARTIM default is 30 s);
        the connection reads PDUs in bulk (``BulkReadSocket``: its only change is ``recv``)."""
        event.assoc.dul.artim_timer.timeout = self.settings.acse_timeout
        event.assoc.dul.socket.__class__ = BulkReadSocket

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return self._server.server_address[1]

    def listening(self) -> bool:
        """Whether the listener's thread is serving its port."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        server = self.ae.make_server((self.settings.bind, self.settings.port),
                                     ssl_context=tls_context(self.settings),
                                     evt_handlers=self._handlers, server_class=AllowListServer)
        server.allowed_hosts = frozenset(self.settings.allowed_hosts)
        server.socket_timeout = self.settings.network_timeout
        self.ae._servers.append(server)  # what start_server does: AE.shutdown() then stops it
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="xiqa-listener", daemon=True)
        self._thread.start()
        logger.info("listening as %s on %s:%d%s", self.settings.ae_title, self.settings.bind, self.port,
                    " (TLS)" if self.settings.tls_certificate else "")

    def stop(self) -> None:
        """Stop accepting associations; those in progress are aborted (nothing unacknowledged is kept)."""
        self.ae.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
