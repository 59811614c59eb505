"""One audit line per connection to the node: who called, from where, what was accepted or refused.

The line is written when the connection closes, on the ``xiqa.audit`` logger::

    audit: MODALITY at 127.0.0.1:40112 (TLS) called XIQA: released after 2.1 s; stored 3 (study 1.2.3: 3);
           refused 1 (storage full: 1); echoes 1
    audit: INTRUDER at 127.0.0.1:40113 called XIQA: association rejected (calling AE title not allowed)
    audit: unknown caller at 127.0.0.1:40114: closed before an association (no request, or TLS failed)

It names AE titles, addresses, Study Instance UIDs and counts, never dataset contents.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pynetdicom import evt

logger = logging.getLogger("xiqa.audit")


@dataclass
class _Connection:
    opened: float = field(default_factory=time.monotonic)
    outcome: str = "closed before an association (no request, or TLS failed)"
    stored: Counter = field(default_factory=Counter)  # study UID -> instances
    refused: Counter = field(default_factory=Counter)  # reason -> instances
    echoes: int = 0
    tls: bool = False


class AuditTrail:
    """Collects what happens on each association and logs it as one line when the connection closes."""

    def __init__(self, allowed_ae_titles: tuple[str, ...] = ()) -> None:
        self._allowed = frozenset(allowed_ae_titles)
        self._connections: dict[int, _Connection] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple]:
        return [(evt.EVT_ACCEPTED, self._accepted), (evt.EVT_REJECTED, self._rejected),
                (evt.EVT_RELEASED, self._released), (evt.EVT_ABORTED, self._aborted),
                (evt.EVT_CONN_CLOSE, self._closed)]

    def stored(self, assoc, study: str) -> None:
        self._get(assoc).stored[study or "none"] += 1

    def refused(self, assoc, reason: str) -> None:
        self._get(assoc).refused[reason] += 1

    def echoed(self, assoc) -> None:
        self._get(assoc).echoes += 1

    def _get(self, assoc) -> _Connection:
        with self._lock:
            return self._connections.setdefault(id(assoc), _Connection())

    def _accepted(self, event: evt.Event) -> None:
        connection = self._get(event.assoc)
        connection.outcome, connection.tls = "accepted", _is_tls(event.assoc)

    def _rejected(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        if self._allowed and calling not in self._allowed:
            reason = "calling AE title not allowed"
        elif len([a for a in event.assoc.ae.active_associations if a.is_acceptor]) > \
                event.assoc.ae.maximum_associations:
            reason = "too many associations"
        else:
            reason = "not acceptable"
        self._get(event.assoc).outcome = f"association rejected ({reason})"

    def _released(self, event: evt.Event) -> None:
        self._ended(event.assoc, "released")

    def _aborted(self, event: evt.Event) -> None:
        self._ended(event.assoc, "aborted")

    def _ended(self, assoc, how: str) -> None:
        connection = self._get(assoc)
        if connection.outcome == "accepted":
            connection.outcome = how

    def _closed(self, event: evt.Event) -> None:
        with self._lock:
            connection = self._connections.pop(id(event.assoc), _Connection())
        requestor, acceptor = event.assoc.requestor, event.assoc.acceptor
        calling = requestor.ae_title or "unknown caller"
        tls = " (TLS)" if connection.tls or _is_tls(event.assoc) else ""
        called = f" called {acceptor.ae_title}" if requestor.ae_title else ""
        line = f"audit: {calling} at {requestor.address}:{requestor.port}{tls}{called}: {connection.outcome}"
        if connection.outcome in ("released", "aborted", "accepted"):
            line += f" after {time.monotonic() - connection.opened:.1f} s"
            line += f"; stored {sum(connection.stored.values())}{_counts(connection.stored, 'study ')}"
            line += f"; refused {sum(connection.refused.values())}{_counts(connection.refused)}"
            line += f"; echoes {connection.echoes}"
        logger.info(line)


def _is_tls(assoc) -> bool:
    return isinstance(getattr(assoc.dul.socket, "socket", None), ssl.SSLSocket)


def _counts(counter: Counter, prefix: str = "") -> str:
    return " (" + ", ".join(f"{prefix}{key}: {value}" for key, value in sorted(counter.items())) + ")" \
        if counter else ""
