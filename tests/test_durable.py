"""Durable writes: a file that was synced is not lost with the entry of a folder made for it."""

from __future__ import annotations

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
