"""import xiqa: the wheel's CUDA runtime is loaded, and HOME falls back to a writable folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from xiqa.runtime import CUDA_RUNTIME, ensure_writable_home, load_cuda_runtime


def test_import_xiqa_loads_the_cuda_runtime_of_the_nvidia_wheel_before_holoscan():
    probe = ("import xiqa, holoscan.core\n"
             "print(*sorted({line.split()[-1] for line in open('/proc/self/maps') if 'libcudart' in line}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert len(loaded) == 1 and loaded[0].endswith(f"/nvidia/cu13/lib/{CUDA_RUNTIME}"), loaded
    assert Path(loaded[0]).resolve() == load_cuda_runtime().resolve()


def test_an_unwritable_home_falls_back_to_a_private_folder_in_the_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "no" / "such" / "home"))
    home = ensure_writable_home()
    assert home == tmp_path / f"xiqa-home-{os.getuid()}"
    assert os.environ["HOME"] == str(home) and home.is_dir() and home.stat().st_mode & 0o777 == 0o700
    assert ensure_writable_home() is None  # now writable: left as it is


def test_a_fallback_folder_of_another_owner_or_a_link_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    (tmp_path / f"xiqa-home-{os.getuid()}").symlink_to(tmp_path)
    home = ensure_writable_home()
    assert home is not None and home.parent == tmp_path and home.name.startswith("xiqa-home-")
    assert not home.is_symlink()
