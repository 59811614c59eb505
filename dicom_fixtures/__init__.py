"""Synthetic chest radiographs and DICOM instances with exact ground truth."""
