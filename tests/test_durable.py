"""Durable writes: a file that was synced is not lost with the entry of a folder made for it; concurrent
writers share folder fsyncs without one acknowledging another too early."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from xiqa import durable


def test_new_folders_are_synced_in_their_parents_before_the_file_is_published(tmp_path, monkeypatch):
    synced: list[Path] = []
    real_fsync_folder = durable.fsync_folder

    def recording(folder: Path) -> None:
        synced.append(Path(folder))
        real_fsync_folder(folder)

    monkeypatch.setattr(durable, "fsync_folder", recording)
    target = tmp_path / "incoming" / "1.2.3" / "4.5.6.dcm"
    durable.write_bytes_atomically(target, b"DICM")
    assert target.read_bytes() == b"DICM"
    # each new folder's entry in its parent, then the file's entry in its folder
    assert synced == [tmp_path, tmp_path / "incoming", tmp_path / "incoming" / "1.2.3"]
    assert not list(target.parent.glob("*.part"))

    synced.clear()
    durable.write_bytes_atomically(target.with_name("7.8.9.dcm"), b"DICM")
    assert synced == [tmp_path / "incoming" / "1.2.3"]  # folders that exist are not synced again


def test_concurrent_folder_syncs_share_fsyncs_and_each_waits_for_one_started_after_its_call(tmp_path):
    """Group commit: fewer fsyncs than callers, yet every caller is covered by an fsync that began
    after it asked (so after its rename)."""
    runs: list[tuple[float, float]] = []

    def slow_fsync(folder: Path) -> None:
        started = time.monotonic()
        durable.fsync_folder(folder)
        time.sleep(0.05)  # a slow disk: callers pile up behind the fsync in progress
        runs.append((started, time.monotonic()))

    group = durable.GroupFolderSync(slow_fsync)
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    def caller(delay: float) -> None:
        time.sleep(delay)
        asked = time.monotonic()
        group.sync(tmp_path)
        with lock:
            calls.append((asked, time.monotonic()))

    threads = [threading.Thread(target=caller, args=(0.01 * (index % 4),)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 12
    assert len(runs) < len(calls) / 2
    for asked, answered in calls:
        assert any(asked <= started and finished <= answered for started, finished in runs)
    assert group._states == {}  # an idle folder is forgotten (one per study on a node)


def test_a_failed_folder_fsync_acknowledges_nobody_and_a_waiting_caller_syncs_again(tmp_path):
    attempts: list[float] = []
    first_running = threading.Event()
    release_first = threading.Event()

    def failing_once(folder: Path) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            first_running.set()
            release_first.wait(10)
            raise OSError(5, "Input/output error")
        durable.fsync_folder(folder)

    group = durable.GroupFolderSync(failing_once)
    outcomes: dict[str, str] = {}

    def caller(name: str) -> None:
        try:
            group.sync(tmp_path)
            outcomes[name] = "synced"
        except OSError:
            outcomes[name] = "failed"

    first = threading.Thread(target=caller, args=("first",))
    first.start()
    assert first_running.wait(10)
    second = threading.Thread(target=caller, args=("second",))
    second.start()
    time.sleep(0.05)  # the second caller now waits on the first one's fsync
    release_first.set()
    first.join(10)
    second.join(10)
    assert outcomes == {"first": "failed", "second": "synced"}
    assert len(attempts) == 2  # the second caller was not acknowledged by the failed fsync


def test_concurrent_atomic_writes_into_one_folder_are_all_published(tmp_path):
    group = durable.GroupFolderSync()
    folder = tmp_path / "incoming" / "1.2.3"
    payloads = {f"{index}.dcm": bytes([index]) * (1000 + index) for index in range(16)}
    threads = [threading.Thread(
        target=durable.write_atomically,
        args=(folder / name, lambda stream, data=data: stream.write(data), group.sync))
        for name, data in payloads.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == payloads  # no .part left
