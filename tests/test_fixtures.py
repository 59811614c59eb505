"""The fixture generator: valid DICOM per dciodvfy, reproducible, masks and Object-CXR CSV consistent."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from xiqa.dicom_fixtures.generate import write_fixture_set
from xiqa.dicom_fixtures.instances import VARIANTS
from xiqa.dicom_fixtures.phantom import OBJECT_KINDS, render_phantom


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_every_fixture_variant_passes_dciodvfy_without_errors(fixture_dir):
    files = sorted(fixture_dir.glob("dicom/*/*.dcm"))
    assert len(files) == len(VARIANTS)
    for path in files:
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_same_seed_gives_identical_files(tmp_path):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    write_fixture_set(tmp_path / "a", 3, seed=5, size_range=(128, 200))
    write_fixture_set(tmp_path / "b", 3, seed=5, size_range=(128, 200))
    write_fixture_set(tmp_path / "c", 3, seed=6, size_range=(128, 200))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_manifest_masks_and_objectcxr_csv_agree(fixture_dir):
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    with open(fixture_dir / "objectcxr" / "annotations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image_name"] for row in rows] == [f"{entry['name']}.jpg" for entry in manifest]
    for entry, row in zip(manifest, rows, strict=True):
        mask = cv2.imread(str(fixture_dir / entry["mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (entry["rows"], entry["columns"])
        assert (mask > 0).sum() > 0 if entry["objects"] else (mask > 0).sum() == 0
        shapes = [part.split()[0] for part in row["annotation"].split(";") if part]
        assert len(shapes) == len(entry["objects"])
        assert set(shapes) <= {"0", "1", "2"}


def test_every_object_kind_is_drawn_inside_its_annotation_box():
    rng = np.random.default_rng(1)
    phantom = render_phantom(rng, 600, 500, list(OBJECT_KINDS))
    assert [o.kind for o in phantom.objects] == list(OBJECT_KINDS)
    for planted in phantom.objects:
        assert planted.area_pixels > 0
        xs, ys = planted.annotation.points[0::2], planted.annotation.points[1::2]
        assert min(xs) < max(xs) and min(ys) < max(ys)
    assert phantom.image[phantom.mask > 0].mean() > phantom.image[phantom.mask == 0].mean() + 0.3
