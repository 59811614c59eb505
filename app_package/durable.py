"""Files that are either complete or absent after a crash: temporary file, fsync, rename, folder fsync."""

from __future__ import annotations

import os
import tempfile
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


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, then publish it as ``path``.

    The folder is created when missing (durably: its entry is synced in its parent
    too).  A reader never sees a partial file, concurrent writers of one path never
    share a temporary file, and a failed write leaves nothing behind (``path`` keeps
    its previous content).
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
    fsync_folder(path.parent)
    return path


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    return write_atomically(path, lambda stream: stream.write(data))
