"""The real-radiograph corpus: every plate of the permissively licensed sources, labelled by eye.

Two sources today, each a public git repository read at a pinned commit:

- ``nih``: the 621-plate sample of NIH ChestX-ray14 in ``jrzech/reproduce-chexnet``
  (``starter_images/``; NIH Clinical Center, no restrictions on use, attribution requested);
- ``hannover``: all 243 plates of the Hannover Medical School COVID-19 image repository
  (CC BY 3.0; most are ICU/bedside AP plates, so tubes, lines and leads are common).

The labels (``data/real_labels/<source>.jsonl``) are ours: view, projection, bedside look, plate
features and every device or foreign object with a category from :data:`CATEGORIES`, as a box
(compact objects) or a polyline along the radio-opaque line (leads, tubes, lines), in the
original image's pixels.  ``build_corpus`` writes the plates at most ``MAX_SIDE`` pixels wide
with a manifest (source, commit, path, licence, attribution, labels in the stored pixels); the
images stay out of the repository and are rebuilt from the public sources.

Held-out figures come from cross-source folds (:func:`training_sources_split`): a model trained
without a source is measured on all of that source's plates.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

MAX_SIDE = 512
LABELS = Path(__file__).resolve().parent.parent / "data" / "real_labels"

#: the fixed object categories, and which are removable by the radiographer (issue 25 uses it)
CATEGORIES = {
    "ecg_electrode": "removable",
    "ecg_lead_wire": "removable",
    "endotracheal_tube": "device",
    "nasogastric_tube": "device",
    "central_line": "device",
    "chest_drain": "device",
    "pacemaker_can": "device",
    "pacing_lead": "device",
    "sternal_wire": "device",
    "surgical_clip": "device",
    "orthopaedic_hardware": "device",
    "jewellery_chain": "removable",
    "button_snap": "removable",
    "bra_hook_underwire": "removable",
    "coin": "removable",
    "other": "other",
}


@dataclass(frozen=True)
class Source:
    key: str
    repository: str
    commit: str
    folder: str  # inside the repository
    licence: str
    attribution: str

    def group(self, image_name: str, metadata: dict[str, dict]) -> str:
        """The patient a plate belongs to, so that splits never share a patient."""
        if self.key == "nih":  # ChestX-ray14 names are <patient>_<follow-up>.png
            return f"nih_patient_{image_name.split('_')[0]}"
        return f"hannover_patient_{metadata[Path(image_name).stem]['patient_id']}"


SOURCES = {
    "nih": Source(
        "nih",
        "https://github.com/jrzech/reproduce-chexnet",
        "a011a9ab108cb03a533aeab52dc934b02a823ac8",
        "starter_images",
        "NIH-ChestX-ray14 (no restrictions on use; attribution requested)",
        "NIH Clinical Center, ChestX-ray14 (Wang et al., CVPR 2017), sample of "
        "github.com/jrzech/reproduce-chexnet",
    ),
    "hannover": Source(
        "hannover",
        "https://github.com/ml-workgroup/covid-19-image-repository",
        "ad7ab099b425f16e06bba22322336b7d6a732965",
        "png",
        "CC-BY-3.0",
        "Hannover Medical School, Institute for Diagnostic and Interventional Radiology "
        "(Winther, Laser, Gerbel et al., COVID-19 Image Repository, doi:10.6084/m9.figshare.12275009)",
    ),
}


@dataclass(frozen=True)
class LabelledObject:
    category: str
    shape: str  # "box" (two corners) or "polyline"
    points: tuple[tuple[float, float], ...]  # (x, y) in the stored image's pixels
    inside_chest: bool

    def scaled(self, factor: float) -> LabelledObject:
        return LabelledObject(
            self.category,
            self.shape,
            tuple((x * factor, y * factor) for x, y in self.points),
            self.inside_chest,
        )


@dataclass(frozen=True)
class CorpusImage:
    id: str
    file: str
    source: str
    group: str
    view: str  # frontal / lateral / other, by eye
    projection: str  # PA / AP / unknown (the source's tag where it has one)
    icu: bool
    features: tuple[str, ...]
    objects: tuple[LabelledObject, ...] = field(default=())

    @property
    def clean(self) -> bool:
        return not self.objects

    @property
    def objects_over_chest(self) -> tuple[LabelledObject, ...]:
        return tuple(o for o in self.objects if o.inside_chest)


def git_show(mirror: Path, commit: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(mirror), "show", f"{commit}:{path}"], check=True, capture_output=True
    ).stdout


def shrink(pixels: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    scale = max_side / max(pixels.shape)
    if scale >= 1:
        return pixels
    size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def read_labels(source: str, folder: Path = LABELS) -> dict[str, dict]:
    """The label records of ``source`` by image name (original pixels)."""
    records = {}
    for line in (folder / f"{source}.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["image"]] = record
    return records


def _objects(record: dict) -> tuple[LabelledObject, ...]:
    objects = []
    for item in record["objects"]:
        if item["category"] not in CATEGORIES:
            raise ValueError(f"label of {record['image']}: unknown category {item['category']!r}")
        objects.append(
            LabelledObject(
                item["category"], item["shape"], tuple(map(tuple, item["points"])), bool(item["inside_chest"])
            )
        )
    return tuple(objects)


def build_corpus(mirrors: dict[str, Path], output: Path, labels: Path = LABELS) -> dict[str, int]:
    """Write every labelled plate of each source in ``mirrors`` (git dirs) to ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    entries = []
    for key, mirror in mirrors.items():
        source = SOURCES[key]
        metadata = {}
        if key == "hannover":
            text = git_show(mirror, source.commit, "data.csv").decode()
            metadata = {row["image_id"]: row for row in csv.DictReader(io.StringIO(text))}
        for name, record in sorted(read_labels(key, labels).items()):
            path = f"{source.folder}/{name}"
            encoded = np.frombuffer(git_show(mirror, source.commit, path), np.uint8)
            pixels = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
            stored = shrink(pixels)
            factor = stored.shape[1] / pixels.shape[1]
            image_id = f"{key}_{Path(name).stem}"
            cv2.imwrite(str(output / f"{image_id}.png"), stored)
            projection = record["projection"]
            if key == "hannover":  # the collection's own tag beats our eye
                projection = metadata[Path(name).stem]["projection"].upper()
            entries.append(
                {
                    "id": image_id,
                    "file": f"{image_id}.png",
                    "source": key,
                    "group": source.group(name, metadata),
                    "view": record["view"],
                    "projection": projection,
                    "icu": record["icu"],
                    "features": record["features"],
                    "objects": [
                        {
                            "category": o.category,
                            "shape": o.shape,
                            "points": [[round(x, 1), round(y, 1)] for x, y in o.points],
                            "inside_chest": o.inside_chest,
                        }
                        for o in (obj.scaled(factor) for obj in _objects(record))
                    ],
                    "origin": {"repository": source.repository, "commit": source.commit, "path": path},
                    "licence": source.licence,
                    "original_size": [int(pixels.shape[1]), int(pixels.shape[0])],
                }
            )
    manifest = {
        "description": "Real chest radiographs of several sources with objects labelled by eye "
        "(training/corpus.py); rebuilt from the public sources, not kept in the repository.",
        "sources": [vars(SOURCES[key]) for key in mirrors],
        "images": entries,
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    return counts


def load_corpus(folder: Path) -> list[CorpusImage]:
    images = []
    for entry in json.loads((Path(folder) / "manifest.json").read_text())["images"]:
        images.append(
            CorpusImage(
                id=entry["id"],
                file=entry["file"],
                source=entry["source"],
                group=entry["group"],
                view=entry["view"],
                projection=entry["projection"],
                icu=entry["icu"],
                features=tuple(entry["features"]),
                objects=_objects({"image": entry["id"], "objects": entry["objects"]}),
            )
        )
    return images


def group_fraction(group: str) -> float:
    """A stable number in [0, 1) per patient group, for splits that never share a patient."""
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0x100000000


def training_sources_split(
    images: list[CorpusImage], sources: set[str], validation_share: float = 0.12
) -> tuple[list[CorpusImage], list[CorpusImage]]:
    """(train, validation) frontal plates of ``sources``, split by patient."""
    usable = [i for i in images if i.source in sources and i.view == "frontal"]
    validation = [i for i in usable if group_fraction(i.group) < validation_share]
    train = [i for i in usable if group_fraction(i.group) >= validation_share]
    return train, validation
