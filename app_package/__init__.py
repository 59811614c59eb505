"""xiqa: chest X-ray quality edge node (DICOM in, explained quality verdict out)."""

__version__ = "0.1.0"
