"""Write a reproducible fixture set: DICOM instances, exact masks, Object-CXR JPEG + CSV.

Layout under the output folder::

    dicom/study_NNN/phantom_NNNN.dcm    one or two instances per study, variants cycled
    masks/phantom_NNNN.png              exact ground truth at source resolution (0/255)
    objectcxr/images/phantom_NNNN.jpg   the same image, 8-bit, for the Object-CXR loader
    objectcxr/annotations.csv           image_name,annotation (0 rectangle, 1 ellipse, 2 polygon)
    manifest.json                       per image: files, variant, size, planted objects

The same seed gives byte-identical DICOM files and masks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .instances import VARIANTS, InstanceVariant, PatientStudy, build_instance, fixture_uid
from .phantom import Phantom, render_phantom

_FAKE_PATIENTS = (
    ("DOE^JANE", "F"),
    ("MUSTERMANN^MAX", "M"),
    ("MÜLLER^JÜRGEN^^DR", "M"),
    ("CANARY^PHI^LEAK", "O"),
    ("NGUYEN^THI^MAI", "F"),
    ("O'BRIEN-SMYTHE^ALEXANDRA^VICTORIA", "F"),
)


@dataclass(frozen=True)
class FixtureRecord:
    name: str
    dicom_path: Path
    mask_path: Path
    variant: InstanceVariant
    object_kinds: tuple[str, ...]


def _study(seed: int, study_index: int, rng: np.random.Generator) -> PatientStudy:
    name, sex = _FAKE_PATIENTS[study_index % len(_FAKE_PATIENTS)]
    return PatientStudy(
        patient_name=name,
        patient_id=f"XQ{seed:03d}{study_index:05d}",
        birth_date=f"19{rng.integers(30, 99)}0{rng.integers(1, 9)}1{rng.integers(0, 9)}",
        sex=sex,
        study_uid=fixture_uid("study", seed, study_index),
        study_date=f"2026{rng.integers(1, 12):02d}{rng.integers(1, 28):02d}",
        study_time=f"{rng.integers(7, 19):02d}{rng.integers(0, 59):02d}00",
        accession_number=f"ACC{seed:03d}{study_index:05d}",
        study_id=str(study_index + 1),
    )


def write_fixture_set(
    output: Path,
    count: int,
    seed: int = 0,
    size_range: tuple[int, int] = (480, 1024),
    variants: tuple[InstanceVariant, ...] = VARIANTS,
    progress: Callable[[int], None] | None = None,
) -> list[FixtureRecord]:
    """Generate ``count`` phantoms and write them in all formats under ``output``."""
    if count < 1:
        raise ValueError(f'Argument "count" must be at least 1, got {count}')
    low, high = size_range
    if not 64 <= low <= high:
        raise ValueError(f'Argument "size_range" must satisfy 64 <= min <= max, got {size_range}')
    rng = np.random.default_rng(seed)
    output = Path(output)
    for folder in ("dicom", "masks", "objectcxr/images"):
        (output / folder).mkdir(parents=True, exist_ok=True)

    records: list[FixtureRecord] = []
    annotations: list[tuple[str, str]] = []
    manifest = []
    study_index, left_in_study, study = -1, 0, None
    for index in range(count):
        if left_in_study == 0:
            study_index += 1
            left_in_study = int(rng.integers(1, 3))
            study = _study(seed, study_index, rng)
        left_in_study -= 1
        variant = variants[index % len(variants)]
        height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
        phantom = render_phantom(rng, height, width)
        name = f"phantom_{index:04d}"
        study_dir = output / "dicom" / f"study_{study_index:03d}"
        study_dir.mkdir(exist_ok=True)
        dataset = build_instance(phantom.image, variant, study, series_number=1 + index % 3,
                                 instance_number=1 + index, uid_seed=(seed, index))
        dicom_path = study_dir / f"{name}.dcm"
        dataset.save_as(dicom_path, enforce_file_format=True)
        mask_path = output / "masks" / f"{name}.png"
        cv2.imwrite(str(mask_path), phantom.mask * 255)
        cv2.imwrite(str(output / "objectcxr/images" / f"{name}.jpg"),
                    np.round(phantom.image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        annotations.append((f"{name}.jpg", ";".join(o.annotation.to_objectcxr() for o in phantom.objects)))
        kinds = tuple(o.kind for o in phantom.objects)
        records.append(FixtureRecord(name, dicom_path, mask_path, variant, kinds))
        manifest.append(_manifest_entry(output, name, dicom_path, mask_path, variant, phantom, dataset))
        if progress:
            progress(index + 1)

    with open(output / "objectcxr/annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "annotation"])
        writer.writerows(annotations)
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return records


def _manifest_entry(output: Path, name: str, dicom_path: Path, mask_path: Path,
                    variant: InstanceVariant, phantom: Phantom, dataset) -> dict:
    return {
        "name": name,
        "dicom": str(dicom_path.relative_to(output)),
        "mask": str(mask_path.relative_to(output)),
        "variant": variant.name,
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "rows": phantom.shape[0],
        "columns": phantom.shape[1],
        "objects": [
            {"kind": o.kind, "area_pixels": o.area_pixels, "annotation": o.annotation.to_objectcxr()}
            for o in phantom.objects
        ],
    }
