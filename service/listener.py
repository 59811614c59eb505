"""The SCP: C-ECHO, and C-STORE of radiographs into the spool, acknowledged only once on disk.

Each handler is small: ``handle_store`` turns one request into one spool write
and one status.  Who may associate is decided before any DICOM is read: the
peer address by ``AllowListServer.verify_request`` (the connection is simply
closed), the calling AE title by pynetdicom's own association rejection.
"""

from __future__ import annotations

import io
import logging
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
from pynetdicom.transport import ThreadedAssociationServer
from xiqa.operators.loader import SUPPORTED_SOP_CLASSES

from .metrics import NodeMetrics
from .settings import ServeSettings
from .spool import Spool, SpooledInstance, StorageFull

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
#: what the loader can decode (pylibjpeg, OpenJPEG, RLE, GDCM)
STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
)


def study_uid_of(dataset: bytes, transfer_syntax: UID) -> str:
    """The Study Instance UID of an encoded dataset (no file meta), parsed only up to that element."""
    if transfer_syntax.is_deflated:
        dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
    try:
        found = read_dataset(io.BytesIO(dataset), transfer_syntax.is_implicit_VR,
                             transfer_syntax.is_little_endian, specific_tags=[STUDY_INSTANCE_UID],
                             stop_when=lambda tag, vr, length: tag > STUDY_INSTANCE_UID)
        return str(found.get("StudyInstanceUID", "") or "")
    except (ValueError, EOFError, OSError, zlib.error):
        return ""  # spooled under "no study"; the loader gives the reason


def handle_store(event: evt.Event, spool: Spool, metrics: NodeMetrics,
                 on_stored: Callable[[SpooledInstance], None]) -> int:
    """Spool one C-STORE request; Success only once the instance is durably on disk."""
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
    dataset = event.request.DataSet.getvalue()
    try:
        stored = spool.store((file_header(event.file_meta), dataset), sop_instance_uid,
                             study_uid_of(dataset, event.context.transfer_syntax))
    except StorageFull as full:
        metrics.instances_refused.labels(reason="storage full").inc()
        logger.error("refused %s from %s: storage full (%s)", sop_instance_uid,
                     event.assoc.requestor.ae_title, full)
        return OUT_OF_RESOURCES
    except OSError as error:
        metrics.instances_refused.labels(reason="storage error").inc()
        logger.error("refused %s from %s: cannot store: %s", sop_instance_uid,
                     event.assoc.requestor.ae_title, error.strerror or type(error).__name__)
        return PROCESSING_FAILURE
    metrics.instances_received.inc()
    if stored is None:
        logger.info("%s was processed before; acknowledged, not processed again", sop_instance_uid)
    else:
        on_stored(stored)
    return SUCCESS


def file_header(file_meta: Dataset) -> bytes:
    """Preamble, prefix and file meta: what precedes the dataset in a DICOM file."""
    return b"\x00" * 128 + b"DICM" + encode_file_meta(file_meta)


class AllowListServer(ThreadedAssociationServer):
    """Closes connections from addresses not on the allow-list before any association starts."""

    allowed_hosts: frozenset[str] = frozenset()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self.allowed_hosts and host not in self.allowed_hosts:
            logger.warning("closed a connection from %s: not on the allowed host list", host)
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


class Listener:
    """The node's SCP, listening in background threads until ``stop``."""

    def __init__(self, settings: ServeSettings, spool: Spool, metrics: NodeMetrics,
                 on_stored: Callable[[SpooledInstance], None]) -> None:
        self.settings = settings
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.maximum_associations = 16
        ae.require_calling_aet = list(settings.allowed_ae_titles)
        ae.add_supported_context(Verification)
        for sop_class in SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self._handlers = [
            (evt.EVT_C_STORE, handle_store, [spool, metrics, on_stored]),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
        ]
        self._server: AllowListServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return self._server.server_address[1]

    def start(self) -> None:
        server = self.ae.make_server((self.settings.bind, self.settings.port),
                                     ssl_context=tls_context(self.settings),
                                     evt_handlers=self._handlers, server_class=AllowListServer)
        server.allowed_hosts = frozenset(self.settings.allowed_hosts)
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
