"""Operations: one node per storage folder, retention of finished instances only."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from serve_helpers import xiqa_command
from xiqa.service.spool import INCOMING, PROCESSED, REJECTED, Spool, StorageInUse

pytestmark = pytest.mark.reliability


def test_a_second_owner_of_a_storage_folder_is_refused(tmp_path):
    first = Spool(tmp_path / "storage")
    first.lock()
    in_use = f"storage {tmp_path / 'storage'} is in use by another xiqa serve (pid {os.getpid()})"
    with pytest.raises(StorageInUse, match=re.escape(in_use)):
        Spool(tmp_path / "storage").lock()
    # a second xiqa serve process: one clear line, exit 1, before it loads a model or opens a port
    second = subprocess.run(xiqa_command("serve", "--storage", str(tmp_path / "storage"), "--output",
                                         str(tmp_path / "out"), "--port", "0"),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == f"xiqa serve: error: {in_use}"


def _instance(spool: Spool, state: str, uid: str, size: int, reason: str | None = None) -> Path:
    path = spool.root / state / "1.2.3" / f"{uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    if reason:
        path.with_suffix(".reason.txt").write_text(reason + "\n")
    return path


def test_retention_deletes_only_finished_instances_by_age_then_size(tmp_path):
    spool = Spool(tmp_path)
    waiting = _instance(spool, INCOMING, "1.1", 5000)
    old = _instance(spool, PROCESSED, "2.1", 1000)
    rejected = _instance(spool, REJECTED, "2.2", 1000, reason="loader failed")
    time.sleep(0.05)
    newer = _instance(spool, PROCESSED, "2.3", 1000)
    newest = _instance(spool, PROCESSED, "2.4", 1000)
    assert spool.expire(None, None) == 0
    # by size: the oldest go until at most 2,000 bytes of finished instances remain
    assert spool.expire(None, 2000) == 2
    assert not old.exists() and not rejected.exists() and not rejected.with_suffix(".reason.txt").exists()
    assert newer.exists() and newest.exists() and waiting.exists()
    # by age: a day later both remaining finished ones are older than 0.5 days; incoming is never touched
    assert spool.expire(0.5, None, now=time.time() + 86400) == 2
    assert waiting.exists() and not newer.exists() and not newest.exists()
    assert spool.waiting()[0].path == waiting
