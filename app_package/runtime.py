"""What the process needs before holoscan, cupy or matplotlib load: run once by ``import xiqa``.

- holoscan-cu13 links ``libcudart.so.13`` with only ``$ORIGIN`` as RUNPATH, even on a CPU node.
  The pip wheel ``nvidia-cuda-runtime`` (a dependency of xiqa, and of CUDA torch) puts it under
  ``site-packages/nvidia/cu13/lib``, where no loader path points.  Loading it first, by path and
  globally, satisfies holoscan's dependency by its soname, with no ``LD_LIBRARY_PATH`` and no
  system CUDA.
- cupy, matplotlib, torch and triton write caches under ``$HOME`` at import.  A container with a
  read-only root filesystem (``docker run --read-only``, a Pod with ``readOnlyRootFilesystem``)
  or a user without a home has no writable ``$HOME``; it then points at a private folder in the
  temp folder (the tmpfs ``/tmp`` of such a container).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import tempfile
from pathlib import Path

CUDA_RUNTIME = "libcudart.so.13"


def load_cuda_runtime() -> Path | None:
    """Load the CUDA runtime of the ``nvidia`` wheels; the file loaded, or None where none is
    installed (then the system loader's, e.g. ``ld.so.conf``, is what holoscan finds)."""
    spec = importlib.util.find_spec("nvidia")
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or []:
        for library in sorted(Path(folder).glob(f"*/lib/{CUDA_RUNTIME}")):
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            return library
    return None


def ensure_writable_home() -> Path | None:
    """Point ``HOME`` at ``<temp>/xiqa-home-<uid>`` when the home folder is not writable; the
    new home, or None where nothing changed (or no temp folder is writable either)."""
    home = os.path.expanduser("~")
    if home != "~" and os.access(home, os.W_OK):
        return None
    try:
        fallback = Path(tempfile.gettempdir()) / f"xiqa-home-{os.getuid()}"
        fallback.mkdir(mode=0o700, exist_ok=True)
        if fallback.is_symlink() or fallback.stat().st_uid != os.getuid():  # someone else's
            fallback = Path(tempfile.mkdtemp(prefix="xiqa-home-"))
    except OSError:
        return None
    os.environ["HOME"] = str(fallback)
    return fallback
