"""What ``xiqa demo`` analyses besides its phantoms: real chest radiographs shipped with the package.

The plates and their provenance (source, licence, attribution, what was changed) are package data
in ``xiqa/demo_plates``, so an installed wheel runs the same demo as a checkout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

DEMO_PLATES = "demo_plates"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DemoPlate:
    """One real plate written as DICOM for the demo."""

    dicom_path: Path
    label: str  # what the demo prints instead of the path, e.g. "real PA plate, clean (Hannover, CC BY 3.0)"


def read_demo_manifest() -> dict:
    """The shipped ``demo_plates/manifest.json``: ``attribution`` and one entry per plate."""
    return json.loads((files("xiqa") / DEMO_PLATES / MANIFEST).read_text(encoding="utf-8"))


def write_demo_plates(folder: Path) -> list[DemoPlate]:
    """Write each shipped plate into ``folder`` as a CR or DX instance of a synthetic patient
    ``DEMO^REAL`` tagged as a modality would (Body Part Examined CHEST, its View Position)."""
    from xiqa.dicom_fixtures.radiographs import dicom_from_png

    folder.mkdir(parents=True, exist_ok=True)
    plates = []
    for index, plate in enumerate(read_demo_manifest()["plates"], start=1):
        # as_file: the package may live in a zip; the PNG reader needs a real file
        with as_file(files("xiqa") / DEMO_PLATES / plate["file"]) as png:
            path = dicom_from_png(png, folder, index, plate["projection"], plate["modality"] == "CR",
                                  patient_prefix="DEMO",
                                  series_description=f"Chest {plate['projection']}, {plate['label']}")
        plates.append(DemoPlate(path, f"{plate['label']} ({plate['credit']})"))
    return plates
