"""Where received instances wait: on disk before they are acknowledged, until the graph is done with them.

    storage/receiving/<random>.dcm       arriving over the network, not acknowledged
    storage/incoming/<study>/<sop>.dcm   acknowledged, not yet processed
    storage/processed/<study>/<sop>.dcm  the graph wrote its outputs
    storage/rejected/<study>/<sop>.dcm   the graph could not use it (+ <sop>.reason.txt)

Folder and file names are UIDs, never patient data.  A data set is written to
``receiving`` as its fragments arrive (:class:`ReceivingFile`), then synced and
moved into ``incoming`` by one rename (:meth:`Spool.adopt`) before Success is
answered; a restart deletes whatever ``receiving`` still holds.  One node at a time owns a
storage folder: :meth:`Spool.lock` holds ``storage/.xiqa.lock`` (``flock``,
released by the kernel however the process ends).  :meth:`Spool.expire` is the
retention of ``processed`` and ``rejected``; it never looks into ``incoming``.
Once expired, a resent instance counts as new and is processed again (its
outputs replace themselves).  A file moves out of
``incoming`` by one rename, after its outputs are written, so after a crash
an instance is either still waiting (and is processed again: the outputs have
deterministic UIDs and replace themselves) or done (and never processed again,
even when a modality sends it once more).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from xiqa.durable import (
    GroupFolderSync,
    fsync_folder,
    make_folders_durably,
    write_bytes_atomically,
)

logger = logging.getLogger(__name__)

RECEIVING, INCOMING, PROCESSED, REJECTED = "receiving", "incoming", "processed", "rejected"
NO_STUDY = "no-study-uid"
_UNSAFE = re.compile(r"[^0-9A-Za-z.-]")
#: errno values that mean "the disk cannot take it", answered as out of resources
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: a received file's pages are handed to the disk every this many bytes (``sync_file_range``), so
#: that the fsync before the acknowledgement waits for the last few MiB only, not the whole plate
WRITEBACK_BYTES = 4 * 2**20


LOCK = ".xiqa.lock"


class StorageInUse(Exception):
    """Another process holds the storage folder's lock."""


class StorageFull(Exception):
    """The storage cannot take an instance without going below its free-space reserve."""


def safe_name(uid: str) -> str:
    """A UID as a file name: anything but digits, letters, dots and dashes becomes ``_``."""
    return _UNSAFE.sub("_", uid.strip())[:128] or "unknown"


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (Python's ``os`` has none); None where the C library lacks it."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _libc_sync_file_range()


class ReceivingFile:
    """One data set being received, in ``storage/receiving``: written as it arrives, then published.

    pynetdicom writes a chunked C-STORE data set to a ``NamedTemporaryFile``; this stands in for
    it (``write``, ``file.flush``, ``close``, ``name``).  A file that cannot be made or written (a
    full or read-only disk) must not raise there: pynetdicom would abort the association without
    a response.  The first error is kept, later data is dropped, and :meth:`Spool.adopt` raises
    it, so the caller is answered "out of resources".
    """

    def __init__(self, folder: Path) -> None:
        self.error: OSError | None = None
        try:
            self._handle, self.name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        except OSError as error:  # a full or read-only disk: answered when the data set is complete
            self._handle, self.name, self.error = -1, "", error
        self._written = 0
        self._handed_to_disk = 0

    @property
    def file(self) -> ReceivingFile:
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is None:
            try:
                view = memoryview(data).cast("B")
                size = view.nbytes
                while view:  # os.write may write less than asked
                    view = view[os.write(self._handle, view):]
                self._written += size
                self._start_writeback()
            except OSError as error:
                self.error = error
        return len(data)

    def _start_writeback(self) -> None:
        if self._written - self._handed_to_disk >= WRITEBACK_BYTES and _sync_file_range is not None:
            # starts the writeback of these pages and returns; a failure here is only a lost head start
            _sync_file_range(self._handle, self._handed_to_disk, self._written - self._handed_to_disk,
                             SYNC_FILE_RANGE_WRITE)
            self._handed_to_disk = self._written

    def flush(self) -> None:
        """Nothing to flush: every ``write`` goes straight to the file."""

    def sync(self) -> None:
        """Raise the first write error, if any; else make the data durable."""
        if self.error is not None:
            raise self.error
        os.fsync(self._handle)

    def publish(self, path: Path) -> None:
        """Close and rename to ``path``; the folder's fsync is the caller's."""
        self.close()
        os.replace(self.name, path)
        self.name = ""  # pynetdicom unlinks ``name`` after the handler: nothing there any more

    def close(self) -> None:
        if self._handle >= 0:
            os.close(self._handle)
            self._handle = -1

    def discard(self) -> None:
        self.close()
        if self.name:
            Path(self.name).unlink(missing_ok=True)
            self.name = ""


@dataclass(frozen=True)
class SpooledInstance:
    study: str  # safe folder name of the Study Instance UID
    path: Path


class Spool:
    """The storage folder of one node."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self._lock: int | None = None
        # concurrent associations storing into one study folder share its fsync (group commit)
        self._folder_sync = GroupFolderSync()
        for name in (RECEIVING, INCOMING, PROCESSED, REJECTED):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def lock(self) -> None:
        """Own the folder until this process ends; ``StorageInUse`` when another one owns it."""
        handle = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise StorageInUse(f"storage {self.root} is in use by another xiqa serve (pid {owner})") from None
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        self._lock = handle

    def expire(self, max_age_days: float | None, max_bytes: int | None, now: float | None = None) -> int:
        """Delete finished instances (with their reason files): those finished more than ``max_age_days``
        ago, then the oldest while ``processed`` and ``rejected`` hold more than ``max_bytes``.

        The number deleted.  Age counts from the move out of ``incoming`` (the file's ctime).
        """
        if max_age_days is None and max_bytes is None:
            return 0
        now = time.time() if now is None else now
        finished = []  # (finished at, bytes, files of one instance)
        for state in (PROCESSED, REJECTED):
            for instance in (self.root / state).glob("*/*.dcm"):
                files = [instance, instance.with_suffix(".reason.txt")]
                try:
                    stats = [path.stat() for path in files if path.exists()]
                except FileNotFoundError:
                    continue
                finished.append((stats[0].st_ctime, sum(stat.st_size for stat in stats), files))
        finished.sort(key=lambda item: item[0])
        total = sum(size for _, size, _ in finished)
        deleted = 0
        for finished_at, size, files in finished:
            too_old = max_age_days is not None and now - finished_at > max_age_days * 86400
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            for path in files:
                path.unlink(missing_ok=True)
            total -= size
            deleted += 1
        return deleted

    def receiving_file(self) -> ReceivingFile:
        """A new file in ``receiving`` for one data set on its way in."""
        return ReceivingFile(self.root / RECEIVING)

    def adopt(self, received: ReceivingFile, sop_instance_uid: str,
              study_instance_uid: str) -> SpooledInstance | None:
        """Make a completely received file durable in ``incoming``; None when the instance was
        processed before (a resend: the file is deleted).

        Raises ``StorageFull`` when the disk refused a write or less than the reserve stays free,
        and other ``OSError``; either way nothing of the instance is kept.
        """
        study = safe_name(study_instance_uid or NO_STUDY)
        name = f"{safe_name(sop_instance_uid)}.dcm"
        if (self.root / PROCESSED / study / name).exists() or (self.root / REJECTED / study / name).exists():
            received.discard()
            return None
        folder = self.root / INCOMING / study
        try:
            received.sync()
            if shutil.disk_usage(self.root).free < self.min_free_bytes:
                raise StorageFull(f"fewer than {self.min_free_bytes} bytes would stay free")
            make_folders_durably(folder)
            received.publish(folder / name)
            self._folder_sync.sync(folder)
        except (OSError, StorageFull) as error:
            received.discard()
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                raise StorageFull(os.strerror(error.errno)) from None
            raise
        return SpooledInstance(study, folder / name)

    def store(self, chunks: Iterable[bytes], sop_instance_uid: str,
              study_instance_uid: str) -> SpooledInstance | None:
        """Write one instance (the concatenated ``chunks``) durably, as :meth:`adopt` does."""
        received = self.receiving_file()
        for chunk in chunks:
            received.write(chunk)
        return self.adopt(received, sop_instance_uid, study_instance_uid)

    def waiting(self) -> list[SpooledInstance]:
        """Instances acknowledged but not processed (e.g. by a process that was killed).

        Call it before the listener starts: data sets still in ``receiving``, and temporary files
        an earlier version left in ``incoming``, were never acknowledged and are removed, and so
        are emptied study folders (not while a store may be creating one).
        """
        for path in (self.root / RECEIVING).iterdir():
            path.unlink(missing_ok=True)
        found = []
        for study_folder in sorted((self.root / INCOMING).iterdir()):
            if not study_folder.is_dir():
                continue
            for path in sorted(study_folder.iterdir()):
                if path.name.endswith(".part"):  # versions before ``receiving`` wrote there
                    path.unlink(missing_ok=True)
                elif path.suffix == ".dcm":
                    found.append(SpooledInstance(study_folder.name, path))
            if not any(study_folder.iterdir()):
                study_folder.rmdir()
        return found

    def finish(self, instance: SpooledInstance, reason: str | None = None) -> Path:
        """Move an instance out of ``incoming``: to ``processed``, or with ``reason`` to ``rejected``."""
        folder = self.root / (PROCESSED if reason is None else REJECTED) / instance.study
        make_folders_durably(folder)
        target = folder / instance.path.name
        if reason is not None:
            write_bytes_atomically(target.with_suffix(".reason.txt"), (reason + "\n").encode())
        os.replace(instance.path, target)
        fsync_folder(folder)
        fsync_folder(instance.path.parent)
        return target
