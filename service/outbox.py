"""The durable outbox: output files forwarded by C-STORE to every configured destination.

    outbox/<entry>.json          waiting: one file and one destination, attempts, next attempt time
    outbox/failed/<entry>.json   given up: the same, plus the last error

Delivery is at least once.  :meth:`Outbox.enqueue` returns only after one entry
per (file, destination) is written atomically and its folder fsynced; an entry
is deleted only after its destination answered Success or a warning status.  A
process killed between the answer and the deletion sends the file again after
the restart; outputs have deterministic UIDs, so the resend replaces the first
copy.  A failed attempt is retried after ``retry_delay`` seconds, doubled after
each further failure up to ten times ``retry_delay``; when the first attempt and
``retries`` retries have failed, the entry is moved to ``failed/``.  A file that is missing or not
readable DICOM goes to ``failed/`` at once: no retry can fix it.

Due entries of one destination travel on one association, with a presentation
context per SOP class and transfer syntax read from each file's meta (explicit
and implicit VR little endian are offered together: pynetdicom converts between
them).  A rejected association or a network error costs one attempt for every
file of that batch, a failure status only for its own file.  Entries keep the
destination they were queued for, so entries left by a run with other
destinations still go where they were meant to.  The folder belongs to one
Outbox at a time; nothing enforces that.

Logs name destinations, entry and file names (UIDs), never dataset contents.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from xiqa.durable import fsync_folder, write_bytes_atomically

from .metrics import NodeMetrics
from .settings import Destination

logger = logging.getLogger(__name__)

FAILED = "failed"
#: statuses after which a file counts as delivered: Success and the C-STORE warnings
#: (coercion of data elements, data set does not match SOP class, elements discarded)
DELIVERED = frozenset({0x0000, 0xB000, 0xB007, 0xB006})
#: seconds for the TCP connect, association negotiation, each DIMSE answer and network silence
NETWORK_TIMEOUT = 30.0
#: an association offers at most 128 presentation contexts (PS3.8, odd context IDs 1-255)
MAX_CONTEXTS = 128
#: the longest wait between two attempts, as a multiple of ``retry_delay``
MAX_BACKOFF = 10
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class _Entry:
    """One file for one destination; ``name`` is its file name in the outbox folder."""

    name: str
    file: Path
    destination: Destination
    attempts: int = 0
    #: ``time.time()`` seconds: wall clock, so that it survives a restart
    next_attempt: float = 0.0

    def encode(self, error: str | None = None) -> bytes:
        entry = {"file": str(self.file), "destination": str(self.destination),
                 "ae_title": self.destination.ae_title, "host": self.destination.host,
                 "port": self.destination.port, "attempts": self.attempts,
                 "next_attempt": self.next_attempt}
        if error is not None:
            entry["error"] = error
        return json.dumps(entry, indent=1).encode()

    @classmethod
    def decode(cls, name: str, data: bytes) -> _Entry:
        """Raises ValueError, KeyError or TypeError for an entry that is not one of ours."""
        entry = json.loads(data)
        # host and port are stored apart: an IPv6 host does not survive "AET@HOST:PORT"
        destination = Destination(entry["ae_title"], entry["host"], int(entry["port"]))
        return cls(name, Path(entry["file"]), destination, int(entry["attempts"]),
                   float(entry["next_attempt"]))


@dataclass(frozen=True)
class _Ready:
    """An entry whose file could be read, with the presentation context it needs."""

    entry: _Entry
    sop_class: UID
    transfer_syntaxes: tuple[UID, ...]


class Outbox:
    """Forwards output files to C-STORE destinations from a durable folder of entries.

    Parameters
    ----------
    folder
        The outbox folder (created when missing); entries a previous run left are picked up.
    destinations
        Where :meth:`enqueue` sends each file.
    calling_ae_title
        Our AE title on the associations.
    metrics
        ``outbox_depth`` follows the waiting entries; ``forwarded``, ``forward_failures`` (failed
        attempts) and ``forward_given_up`` (entries moved to ``failed/``) count per destination.
    retries
        Retries after a failed first attempt before an entry is given up (0: one attempt only).
    retry_delay
        Seconds before the first retry; each further retry waits twice as long, at most ten times this.
    max_pdu_size
        The largest PDU we accept from a destination (0: no limit).
    ssl_context
        TLS client context for every destination; the server name checked is the destination host.

    Raises
    ------
    ValueError
        If ``retries``, ``retry_delay`` or ``max_pdu_size`` is negative.
    """

    def __init__(self, folder: Path, destinations: Sequence[Destination], *, calling_ae_title: str,
                 metrics: NodeMetrics, retries: int = 5, retry_delay: float = 10.0,
                 max_pdu_size: int = 131072, ssl_context: ssl.SSLContext | None = None) -> None:
        for name, value in (("retries", retries), ("retry_delay", retry_delay),
                            ("max_pdu_size", max_pdu_size)):
            if value < 0:
                raise ValueError(f'Argument "{name}" must be >= 0, got {value}')
        self.folder = Path(folder)
        self.destinations = tuple(destinations)
        self._calling_ae_title = calling_ae_title
        self._metrics = metrics
        self._retries = retries
        self._retry_delay = retry_delay
        self._max_pdu_size = max_pdu_size
        self._ssl_context = ssl_context
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        (self.folder / FAILED).mkdir(parents=True, exist_ok=True)
        self._pending = self._load()
        self._metrics.outbox_depth.set(len(self._pending))
        if self._pending:
            logger.info("outbox %s: %d entries from an earlier run are waiting", self.folder,
                        len(self._pending))

    def enqueue(self, files: Sequence[Path]) -> None:
        """Queue every file for every destination; returns once the entries are durably on disk."""
        entries = [_Entry(f"{time.time_ns():020d}-{uuid.uuid4().hex}.json", Path(file).absolute(),
                          destination)
                   for file in files for destination in self.destinations]
        written: list[_Entry] = []
        try:  # the lock is not held while writing: the sender never waits for our fsyncs
            for entry in entries:
                write_bytes_atomically(self.folder / entry.name, entry.encode())
                written.append(entry)
        finally:  # what is on disk is sent, even when a later write failed (a full disk, say)
            with self._condition:
                self._pending.update((entry.name, entry) for entry in written)
                self._metrics.outbox_depth.set(len(self._pending))
                self._condition.notify_all()

    def start(self) -> None:
        """Start the sending thread (a daemon: entries are durable, so an abrupt exit loses nothing)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the outbox is already running")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="xiqa-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the file being sent; the rest stays queued for the next start."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("outbox thread still sending after %.0f s; its entries stay queued", timeout)

    def wait_empty(self, timeout: float) -> bool:
        """True once no entry is waiting, False when ``timeout`` seconds passed first."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._pending, timeout)

    def _load(self) -> dict[str, _Entry]:
        """The entries on disk; one that cannot be decoded goes to ``failed/`` as it is."""
        entries: dict[str, _Entry] = {}
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".part"):
                path.unlink()  # a temporary file of a write that a crash interrupted
            elif path.suffix == ".json" and path.is_file():
                try:
                    entries[path.name] = _Entry.decode(path.name, path.read_bytes())
                except (ValueError, KeyError, TypeError):
                    logger.error("outbox entry %s is not readable; moved to %s/", path.name, FAILED)
                    os.replace(path, self.folder / FAILED / path.name)
        fsync_folder(self.folder)
        fsync_folder(self.folder / FAILED)
        return entries

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping:
                    started = time.time()
                    due = [entry for entry in self._pending.values() if entry.next_attempt <= started]
                    if due:
                        break
                    wake = min((entry.next_attempt for entry in self._pending.values()), default=None)
                    self._condition.wait(None if wake is None else wake - started)
                if self._stopping:
                    return
            batches: dict[Destination, list[_Entry]] = {}
            for entry in sorted(due, key=lambda entry: entry.name):
                batches.setdefault(entry.destination, []).append(entry)
            for destination, batch in batches.items():
                if self._stopping:
                    return
                try:
                    self._forward(destination, batch)
                except Exception:  # the thread must outlive a bug or a failing disk
                    logger.exception("forwarding to %s failed unexpectedly; retrying later", destination)
                    self._metrics.forward_failures.labels(str(destination)).inc()
                    later = started + MAX_BACKOFF * self._retry_delay
                    for entry in batch:  # in memory only: the disk may be what fails
                        entry.next_attempt = max(entry.next_attempt, later)

    def _forward(self, destination: Destination, batch: list[_Entry]) -> None:
        """Send one destination's due entries, at most :data:`MAX_CONTEXTS` contexts per association."""
        ready = []
        for entry in batch:
            try:
                meta = dcmread(entry.file, stop_before_pixels=True).file_meta
                syntax = UID(meta.TransferSyntaxUID)
                ready.append(_Ready(entry, UID(meta.MediaStorageSOPClassUID),
                                    _UNCOMPRESSED if syntax in _UNCOMPRESSED else (syntax,)))
            except (OSError, InvalidDicomError, AttributeError, ValueError, EOFError) as error:
                self._unreadable(entry, error)
        for group in _by_contexts(ready):
            if self._stopping:
                return
            self._send(destination, group)

    def _send(self, destination: Destination, group: list[_Ready]) -> None:
        ae = AE(ae_title=self._calling_ae_title)
        ae.connection_timeout = ae.acse_timeout = NETWORK_TIMEOUT
        ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
        for context in dict.fromkeys((item.sop_class, item.transfer_syntaxes) for item in group):
            ae.add_requested_context(*context)
        tls = None if self._ssl_context is None else (self._ssl_context, destination.host)
        association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                                   max_pdu=self._max_pdu_size, tls_args=tls)
        if not association.is_established:
            self._failed([item.entry for item in group], "association rejected" if association.is_rejected
                         else "destination not reachable or association aborted")
            return
        delivered = 0
        try:
            for index, item in enumerate(group):
                if self._stopping:
                    break
                if not association.is_established:
                    self._failed([rest.entry for rest in group[index:]], "association lost")
                    break
                try:
                    status = association.send_c_store(item.entry.file).get("Status")
                except (OSError, InvalidDicomError, AttributeError) as error:  # changed since _forward
                    self._unreadable(item.entry, error)
                    continue
                except ValueError:  # no accepted context for its SOP class and syntax, or not encodable
                    self._failed([item.entry], f"cannot send as {item.sop_class} on this association")
                    continue
                if status in DELIVERED:
                    self._delivered(item.entry)
                    delivered += 1
                elif status is None:
                    self._failed([item.entry], "no answer")
                else:
                    self._failed([item.entry], f"status 0x{status:04X}")
        finally:
            if association.is_established:
                association.release()
        if delivered:
            logger.info("forwarded %d file(s) to %s", delivered, destination)

    def _delivered(self, entry: _Entry) -> None:
        (self.folder / entry.name).unlink()
        fsync_folder(self.folder)
        with self._condition:
            del self._pending[entry.name]
            self._metrics.forwarded.labels(str(entry.destination)).inc()
            self._metrics.outbox_depth.set(len(self._pending))
            self._condition.notify_all()

    def _failed(self, entries: list[_Entry], reason: str) -> None:
        """Count one failed attempt for each entry; reschedule it, or give it up after 1 + ``retries``."""
        if not entries:
            return
        retrying, now = [], time.time()  # one clock reading: a batch retries together, as one batch
        for entry in entries:
            self._metrics.forward_failures.labels(str(entry.destination)).inc()
            entry.attempts += 1
            if entry.attempts > self._retries:
                self._give_up(entry, reason)
                continue
            delay = min(self._retry_delay * 2 ** (entry.attempts - 1), MAX_BACKOFF * self._retry_delay)
            entry.next_attempt = now + delay
            retrying.append(entry)
            write_bytes_atomically(self.folder / entry.name, entry.encode())
        if retrying:
            first = retrying[0]
            logger.warning("forwarding %d file(s) to %s failed: %s; failed attempt %d of %d, next in %.3g s",
                           len(retrying), first.destination, reason, first.attempts,
                           self._retries + 1, first.next_attempt - now)

    def _unreadable(self, entry: _Entry, error: Exception) -> None:
        """A missing or broken file fails for good: one failed attempt, then ``failed/`` at once."""
        self._metrics.forward_failures.labels(str(entry.destination)).inc()
        entry.attempts += 1
        self._give_up(entry, "file missing" if isinstance(error, FileNotFoundError)
                      else f"file not readable as DICOM ({type(error).__name__})")

    def _give_up(self, entry: _Entry, reason: str) -> None:
        """Move the entry to ``failed/`` with its last error, for a person to look at."""
        write_bytes_atomically(self.folder / FAILED / entry.name, entry.encode(error=reason))
        (self.folder / entry.name).unlink()
        fsync_folder(self.folder)
        logger.error("gave up forwarding %s to %s after %d attempt(s): %s; entry %s/%s",
                     entry.file.name, entry.destination, entry.attempts, reason, FAILED, entry.name)
        with self._condition:
            del self._pending[entry.name]
            self._metrics.forward_given_up.labels(str(entry.destination)).inc()
            self._metrics.outbox_depth.set(len(self._pending))
            self._condition.notify_all()


def _by_contexts(items: list[_Ready]) -> Iterator[list[_Ready]]:
    """Consecutive groups of ``items`` that need at most :data:`MAX_CONTEXTS` presentation contexts."""
    group: list[_Ready] = []
    contexts: set[tuple[UID, tuple[UID, ...]]] = set()
    for item in items:
        context = (item.sop_class, item.transfer_syntaxes)
        if context not in contexts and len(contexts) == MAX_CONTEXTS:
            yield group
            group, contexts = [], set()
        contexts.add(context)
        group.append(item)
    if group:
        yield group

