"""xiqa: chest X-ray quality edge node (DICOM in, explained quality verdict out)."""

from xiqa.runtime import ensure_writable_home, load_cuda_runtime

__version__ = "0.1.0"

ensure_writable_home()
load_cuda_runtime()
