"""Shared by the ``xiqa serve`` tests: a pynetdicom SCU that sends files or echoes."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification


def _associate(port: int, contexts: set[tuple[str, ...]], calling: str, called: str,
               ssl_context: ssl.SSLContext | None) -> Association:
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
    association = _associate(port, contexts, calling, called, ssl_context)
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


def echo(port: int, *, calling: str = "MODALITY", called: str = "XIQA",
         ssl_context: ssl.SSLContext | None = None) -> bool:
    association = _associate(port, {(Verification,)}, calling, called, ssl_context)
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return status is not None and status.Status == 0
