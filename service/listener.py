"""The SCP: C-ECHO, and C-STORE of radiographs into the spool, acknowledged only once on disk.

Each handler is small: ``handle_store`` turns one request into one spool write
and one status.  Who may associate is decided before any DICOM is read: the
peer address by ``AllowListServer.verify_request`` (the connection is simply
closed), the calling AE title by pynetdicom's own association rejection.

Every connection gets a socket timeout (the network timeout) and, with TLS,
its handshake runs in that connection's own thread: a caller that goes silent
holds one association slot until it times out, never the port.  Each
connection ends in one audit line (``service.audit``).

A data set never sits whole in memory: pynetdicom writes its fragments as they arrive
(``STORE_RECV_CHUNKED_DATASET``) into the spool's ``receiving`` folder
(:func:`receive_data_sets_in_files`), and the handler only syncs and renames that file.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
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
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from xiqa.operators.loader import SUPPORTED_SOP_CLASSES

from .audit import AuditTrail
from .metrics import NodeMetrics
from .settings import ServeSettings
from .spool import ReceivingFile, Spool, SpooledInstance, StorageFull

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: bytes one ``recv`` may take ahead of what pynetdicom asked for (several PDUs of 128 KiB)
READ_AHEAD_BYTES = 2**20
#: how long the reading thread waits for data before it looks at what it has to send
DATA_WAIT = 0.001
#: what the loader can decode (pylibjpeg, OpenJPEG, RLE, GDCM)
STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
)


def study_uid_of(path: Path | str) -> str:
    """The Study Instance UID of a received DICOM file, read only up to that element."""
    try:
        with open(path, "rb") as stream:
            found = read_partial(stream, stop_when=lambda tag, vr, length: tag > STUDY_INSTANCE_UID,
                                 specific_tags=[STUDY_INSTANCE_UID])
        return str(found.get("StudyInstanceUID", "") or "")
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, zlib.error):
        return ""  # spooled under "no study"; the loader gives the reason


def receive_data_sets_in_files() -> None:
    """Have pynetdicom write every C-STORE data set to a file as it arrives, in the spool of the
    connection's reading thread where it has one.

    Both settings are process-wide (pynetdicom has no per-AE switch): a C-STORE SCP elsewhere in the
    same process gets its data sets in temporary files too, which ``event.dataset`` still reads.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _file_for_data_set


def _file_for_data_set(**options: Any) -> Any:
    spool: Spool | None = getattr(threading.current_thread(), "xiqa_spool", None)
    return spool.receiving_file() if spool is not None else tempfile.NamedTemporaryFile(**options)


def handle_store(event: evt.Event, spool: Spool, metrics: NodeMetrics,
                 on_stored: Callable[[SpooledInstance], None], audit: AuditTrail) -> int:
    """Spool one C-STORE request; Success only once the instance is durably on disk.

    A full disk, and any other storage error (a read-only or vanished spool), answers "out of
    resources": the caller may send it again later, and nothing of it is kept.  A request
    without a data set cannot be stored: "cannot understand".
    """
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
    received = getattr(event.request, "_dataset_file", None)
    if not isinstance(received, ReceivingFile):
        return _refuse(event, metrics, audit, "no data set", CANNOT_UNDERSTAND)
    study = study_uid_of(received.name)
    try:
        stored = spool.adopt(received, sop_instance_uid, study)
    except (StorageFull, OSError) as error:
        full = isinstance(error, StorageFull)
        detail = error if full else error.strerror or type(error).__name__
        return _refuse(event, metrics, audit, "storage full" if full else "storage error",
                       OUT_OF_RESOURCES, detail)
    metrics.instances_received.inc()
    audit.stored(event.assoc, study)
    if stored is None:
        logger.info("%s was processed before; acknowledged, not processed again", sop_instance_uid)
    else:
        on_stored(stored)
    return SUCCESS


def _refuse(event: evt.Event, metrics: NodeMetrics, audit: AuditTrail, reason: str, status: int,
            detail: object = None) -> int:
    metrics.instances_refused.labels(reason=reason).inc()
    audit.refused(event.assoc, reason)
    logger.error("refused %s from %s: %s%s", event.request.AffectedSOPInstanceUID,
                 event.assoc.requestor.ae_title, reason, f" ({detail})" if detail else "")
    return status


class BulkReadSocket(AssociationSocket):
    """pynetdicom's socket, reading ahead: one ``recv`` takes whatever the kernel holds, up to 1 MiB.

    pynetdicom reads every PDU header (6 bytes) and body separately, the body 4 KiB at a time:
    for a 7 MB plate some 1,800 calls, each taking the GIL back from the other associations'
    threads.  Here headers and bodies are served from one read-ahead buffer, and a body larger
    than what is buffered is read in place into its own buffer.  ``ready`` waits up to
    ``DATA_WAIT`` for data (instead of the reactor sleeping between polls).  Same contract as
    pynetdicom's: ``recv`` returns the bytes asked for, fewer only when the peer closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._empty_read_ahead()

    @classmethod
    def take_over(cls, connection: AssociationSocket) -> BulkReadSocket:
        """Turn a connection pynetdicom made into one of these, before anything was read from it."""
        connection.__class__ = cls
        reader = cast(BulkReadSocket, connection)
        reader._empty_read_ahead()
        return reader

    def _empty_read_ahead(self) -> None:
        self._ahead, self._start, self._end = bytearray(READ_AHEAD_BYTES), 0, 0

    @property
    def ready(self) -> bool:
        if self._end > self._start:
            return True
        if self.socket is None or self._is_connected is False:
            return False
        if isinstance(self.socket, ssl.SSLSocket) and self.socket.pending():
            return True
        try:
            readable, _, _ = select.select([self.socket], [], [], DATA_WAIT)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        buffered = min(nr_bytes, self._end - self._start)
        result = bytearray(nr_bytes)
        result[:buffered] = self._ahead[self._start:self._start + buffered]
        self._start += buffered
        read = buffered
        while read < nr_bytes:
            if nr_bytes - read >= READ_AHEAD_BYTES // 2:  # large: straight into the result
                count = self.socket.recv_into(memoryview(result)[read:])
            else:
                count = min(self._fill(), nr_bytes - read)
                result[read:read + count] = self._ahead[:count]
                self._start = count
            if not count:  # the peer closed: what came so far
                return result[:read]
            read += count
        return result

    def _fill(self) -> int:
        """Read what the kernel holds into the empty read-ahead buffer; 0 when the peer closed."""
        self._start = 0
        self._end = self.socket.recv_into(self._ahead)
        return self._end


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
        self.spool = spool
        self.audit = AuditTrail(settings.allowed_ae_titles)
        receive_data_sets_in_files()
        self._handlers = [
            (evt.EVT_C_STORE, handle_store, [spool, metrics, on_stored, self.audit]),
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_CONN_OPEN, self._opened),
            (evt.EVT_CONN_CLOSE, self._closed),
            *self.audit.handlers(),
        ]
        self._server: AllowListServer | None = None
        self._thread: threading.Thread | None = None

    def _echo(self, event: evt.Event) -> int:
        self.audit.echoed(event.assoc)
        return SUCCESS

    def _opened(self, event: evt.Event) -> None:
        """The A-ASSOCIATE request must come within the ACSE timeout (pynetdicom's ARTIM default is 30 s);
        the connection reads ahead (``BulkReadSocket``: it changes ``recv`` and ``ready`` only), waits
        for data in ``select`` rather than sleeping, and writes data sets into this node's spool."""
        dul = event.assoc.dul
        dul.artim_timer.timeout = self.settings.acse_timeout
        BulkReadSocket.take_over(dul.socket)
        dul._run_loop_delay = 0
        dul.xiqa_spool = self.spool

    def _closed(self, event: evt.Event) -> None:
        """A connection that ends half-way through a data set leaves nothing in ``receiving``."""
        message = event.assoc.dimse.message
        received = getattr(message, "_data_set_file", None)
        if isinstance(received, ReceivingFile):
            received.discard()

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
