"""Files that are either complete or absent after a crash: temporary file, fsync, rename, folder fsync."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_folder(folder: Path) -> None:
    """Make renames and deletions inside ``folder`` durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_folders_durably(folder: Path) -> None:
    """Create ``folder`` and any missing parents, each one's entry made durable in its parent.

    Without the parent's fsync, a crash after a file inside a new folder was synced could still
    lose the folder's own entry, and the file with it.
    """
    folder = Path(folder)
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_folder(new.parent)


class GroupFolderSync:
    """Folder fsyncs shared by concurrent writers (group commit).

    ``sync(folder)`` returns once an fsync of ``folder`` that *started after the call* has
    finished: that fsync makes durable every rename done in the folder before it, so
    writers that publish files at the same time need one fsync between them, not one
    each.  While one caller's fsync runs, the others wait for it and the next caller
    syncs for everyone that queued meanwhile.  A failed fsync acknowledges nobody: it
    raises in the caller that ran it, and a waiting caller runs its own.
    """

    def __init__(self, fsync: Callable[[Path], None] | None = None) -> None:
        self._fsync = fsync or (lambda folder: fsync_folder(folder))
        self._guard = threading.Lock()
        self._states: dict[Path, _FolderSyncState] = {}

    def sync(self, folder: Path) -> None:
        folder = Path(folder)
        with self._guard:
            state = self._states.setdefault(folder, _FolderSyncState())
            state.users += 1
        try:
            self._sync(folder, state)
        finally:
            with self._guard:  # forget idle folders: the node makes one per study
                state.users -= 1
                if state.users == 0:
                    del self._states[folder]

    def _sync(self, folder: Path, state: _FolderSyncState) -> None:
        with state.condition:
            state.requested += 1
            ticket = state.requested
            while state.synced < ticket:
                if state.running:
                    state.condition.wait()
                    continue
                state.running = True
                covered = state.requested  # every ticket so far was issued after its rename
                state.condition.release()
                try:
                    self._fsync(folder)
                finally:
                    state.condition.acquire()
                    state.running = False
                    state.condition.notify_all()
                state.synced = max(state.synced, covered)


class _FolderSyncState:
    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.requested = 0  # tickets handed out
        self.synced = 0  # every ticket up to this one is covered by a finished fsync
        self.running = False
        self.users = 0  # callers inside sync()


def write_atomically(path: Path, write: Callable[[BinaryIO], object],
                     sync_folder: Callable[[Path], None] | None = None) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, then publish it as ``path``.

    The folder is created when missing (durably: its entry is synced in its parent
    too).  A reader never sees a partial file, concurrent writers of one path never
    share a temporary file, and a failed write leaves nothing behind (``path`` keeps
    its previous content).  ``sync_folder`` makes the rename durable (a ``GroupFolderSync``'s
    ``sync`` lets concurrent writers share it).
    """
    path = Path(path)
    make_folders_durably(path.parent)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    (sync_folder or fsync_folder)(path.parent)
    return path


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    return write_atomically(path, lambda stream: stream.write(data))
