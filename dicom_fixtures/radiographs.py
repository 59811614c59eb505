"""Real radiographs stored as PNG, written as DICOM instances tagged as a modality would tag them.

Used by ``xiqa demo`` (the plates shipped in ``xiqa/demo_plates``) and by
``benchmarks/real_radiographs.py`` (corpus plates through the whole graph).  The patient and study
are synthetic and derived from the file name alone, so the same PNG always
gives the same UIDs and no real identity ever enters a data set.
"""

from __future__ import annotations

from pathlib import Path

from .instances import VARIANTS_BY_NAME, PatientStudy, build_instance, fixture_uid

# a CR plate stored inverted and uncompressed, a DX plate as JPEG 2000: the two encodings modalities
# send most, so the loader's MONOCHROME1 and compressed paths both see real anatomy
MONOCHROME1_VARIANT, MONOCHROME2_VARIANT = "cr_m1_12bit_explicit_window", "dx_m2_14bit_j2k_window"


def dicom_from_png(png: Path, output: Path, index: int, projection: str, monochrome1: bool,
                   patient_prefix: str = "EVAL", series_description: str | None = None) -> Path:
    """Write ``output/<png stem>.dcm``: a CR (``monochrome1``) or DX instance of a PNG radiograph,
    tagged as a frontal chest (Body Part Examined CHEST, View Position ``projection``).

    The patient is ``<patient_prefix>^REAL`` with ID ``<patient_prefix><index>``, one study per PNG.
    """
    from xiqa.training.datasets import read_raster  # lazily: training imports this package

    variant = VARIANTS_BY_NAME[MONOCHROME1_VARIANT if monochrome1 else MONOCHROME2_VARIANT]
    seed = patient_prefix.lower()
    study = PatientStudy(
        f"{patient_prefix}^REAL",
        f"{patient_prefix}{index:04d}",
        "19700101",
        "O",
        fixture_uid(f"{seed}-study", png.name),
        "20261201",
        "120000",
        f"ACC{index:04d}",
        str(index),
    )
    dataset = build_instance(read_raster(png), variant, study, 1, 1 + index, uid_seed=(seed, png.name))
    dataset.ViewPosition = projection
    dataset.StudyDescription = f"CHEST {projection}"
    dataset.SeriesDescription = series_description or f"Chest {projection}, real radiograph from PNG"
    dataset.Manufacturer = "xiqa (a real radiograph converted from PNG)"
    path = output / f"{png.stem}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path
