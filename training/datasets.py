"""Training data: listing the three sources, loading them onto the network grid, augmenting.

Sources (``list_source``), each giving *items*: small dicts that name where an
image and its ground truth are, with a unique ``id`` (used to keep the folds
disjoint and written to ``splits.json``):

- ``objectcxr``: a folder of JPEGs (any size) + ``image_name,annotation`` CSV
  (see ``objectcxr.py``); malformed rows and missing images are reported and
  skipped.
- ``synthetic``: a folder written by ``xiqa fixtures`` (``manifest.json``,
  ``masks/*.png`` with the DICOM instances or the JPEG copies), or phantoms
  rendered on the fly (``list_rendered``; nothing on disk).
- ``dicom``: a folder of CR/DX/SC instances and DICOM SEG instances that
  reference them; the union of all segments is the ground truth.

``LoadSampled`` turns an item into ``{"id", "image": (1, S, S) float32 in
[0, 1], "label": (1, S, S) uint8}`` with the same pre-processing the app
applies at inference (``operators.preprocess``; DICOM through
``operators.loader``).  ``prepare_samples`` runs it once per item so that the
K folds share one decoded copy; ``training_transforms`` (random, MONAI) and
``evaluation_transforms`` then bring samples to the network's channels.

Ids never carry patient identity: file names for JPEG/synthetic sources, the
SOP Instance UID for DICOM.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from monai.transforms import Transform
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.operators.preprocess import PreprocessConfig, resize_mask, to_network_input

from .objectcxr import ObjectShape, draw_objects, read_annotations

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("objectcxr", "synthetic", "dicom")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
DEFAULT_RENDER_SIZES = (384, 768)


# --------------------------------------------------------------------------- on-the-fly phantoms

def render_phantom_sample(seed: int, index: int, size_range: tuple[int, int] = DEFAULT_RENDER_SIZES,
                          config: PreprocessConfig = PreprocessConfig()) -> dict[str, np.ndarray]:
    """One {"image": (C, S, S), "label": (1, S, S)} sample on the network grid.

    Each sample index maps to its own random stream, so sample ``i`` of seed
    ``s`` is the same image whatever else is drawn, and two seeds never share
    images.
    """
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    phantom = render_phantom(rng, height, width)
    return {
        "image": to_network_input(phantom.image, config),
        "label": resize_mask(phantom.mask, config.size, config.size)[None].astype(np.float32),
    }


def render_phantom_samples(seed: int, count: int, **kwargs) -> list[dict[str, np.ndarray]]:
    return [render_phantom_sample(seed, index, **kwargs) for index in range(count)]


# --------------------------------------------------------------------------- listing sources

@dataclass
class SourceListing:
    """Items found in a source and one ``"where: reason"`` line for each thing skipped."""

    items: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def list_source(data: Path | str | None, source_format: str, **options) -> SourceListing:
    """Dispatch to ``list_objectcxr``, ``list_synthetic`` (or ``list_rendered``) or ``list_dicom``.

    Raises
    ------
    ValueError
        ``source_format`` is not one of ``SOURCE_FORMATS``.
    FileNotFoundError
        ``data`` does not exist or holds nothing of that format.
    """
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f'Argument "source_format" must be one of {SOURCE_FORMATS}, '
                         f"got {source_format!r}")
    if source_format == "synthetic" and options.get("render"):
        return list_rendered(options["render"], options.get("seed", 0),
                             options.get("render_sizes", DEFAULT_RENDER_SIZES))
    if data is None or not Path(data).exists():
        raise FileNotFoundError(f"data path {data} does not exist")
    if source_format == "objectcxr":
        return list_objectcxr(data, images=options.get("images"))
    if source_format == "synthetic":
        return list_synthetic(data, images=options.get("synthetic_images", "dicom"))
    return list_dicom(data, missing_seg=options.get("missing_seg", "skip"))


def find_objectcxr_files(path: Path | str, images: Path | str | None = None) -> tuple[Path, Path]:
    """The annotation CSV and the image folder for ``path`` (a CSV, its folder or a fixture set).

    The image folder is, in order: ``images`` if given; the folder named like
    the CSV (``train.csv`` -> ``train/``, the challenge layout); ``images/``
    next to the CSV; the CSV's own folder.
    """
    path = Path(path)
    if path.is_file():
        csv_path = path
    elif (path / "objectcxr" / "annotations.csv").is_file():  # a fixture set's root
        csv_path = path / "objectcxr" / "annotations.csv"
    else:
        candidates = sorted(path.glob("*.csv"))
        named = [c for c in candidates if c.name == "annotations.csv"]
        if len(candidates) == 1 or named:
            csv_path = (named or candidates)[0]
        elif not candidates:
            raise FileNotFoundError(f"no Object-CXR annotation CSV in {path}")
        else:
            names = ", ".join(c.name for c in candidates)
            raise FileNotFoundError(f"several CSV files in {path} ({names}); pass the annotation "
                                    "CSV itself as --data")
    if images is not None:
        return csv_path, Path(images)
    for folder in (csv_path.parent / csv_path.stem, csv_path.parent / "images"):
        if folder.is_dir():
            return csv_path, folder
    return csv_path, csv_path.parent


def list_objectcxr(path: Path | str, images: Path | str | None = None) -> SourceListing:
    csv_path, image_dir = find_objectcxr_files(path, images)
    table = read_annotations(csv_path)
    listing = SourceListing(problems=[f"{csv_path.name} {p}; row skipped" for p in table.problems])
    for row in table.images:
        image_path = image_dir / row.image_name
        if not image_path.is_file():
            listing.problems.append(f"{csv_path.name} line {row.line}: image {row.image_name} "
                                    f"not found in {image_dir.name}/; row skipped")
            continue
        listing.items.append({
            "id": row.image_name, "image": str(image_path), "image_type": "raster",
            "label_type": "objects",
            "label": [[shape.shape_type, list(shape.points)] for shape in row.objects],
        })
    return listing


def list_synthetic(folder: Path | str, images: str = "dicom") -> SourceListing:
    """Items of a fixture set; ``images`` picks the DICOM instances or the Object-CXR JPEGs."""
    if images not in ("dicom", "jpeg"):
        raise ValueError(f'Argument "images" must be "dicom" or "jpeg", got {images!r}')
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} has no manifest.json (not written by xiqa fixtures)")
    listing = SourceListing()
    for entry in json.loads(manifest_path.read_text()):
        name = entry["name"]
        image = folder / (entry["dicom"] if images == "dicom" else f"objectcxr/images/{name}.jpg")
        mask = folder / entry["mask"]
        missing = [p.relative_to(folder).as_posix() for p in (image, mask) if not p.is_file()]
        if missing:
            listing.problems.append(f"{name}: missing {', '.join(missing)}; skipped")
            continue
        listing.items.append({"id": name, "image": str(image),
                              "image_type": "dicom" if images == "dicom" else "raster",
                              "label_type": "png", "label": str(mask)})
    return listing


def list_rendered(count: int, seed: int = 0,
                  sizes: tuple[int, int] = DEFAULT_RENDER_SIZES) -> SourceListing:
    """``count`` phantoms drawn on the fly from ``(seed, index)``; nothing is read from disk."""
    if count < 1:
        raise ValueError(f'Argument "count" must be at least 1, got {count}')
    return SourceListing(items=[{"id": f"render_{seed}_{index:05d}", "image_type": "render",
                                 "label_type": "render", "render": [seed, index, *sizes]}
                                for index in range(count)])


def list_dicom(folder: Path | str, missing_seg: str = "skip") -> SourceListing:
    """Radiographs with the SEG instances that reference them.

    ``missing_seg`` says what a radiograph without any SEG means: ``"skip"``
    (not annotated; reported) or ``"empty"`` (annotated, no object).
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from xiqa.operators.loader import SUPPORTED_SOP_CLASSES, expand_inputs

    if missing_seg not in ("skip", "empty"):
        raise ValueError(f'Argument "missing_seg" must be "skip" or "empty", got {missing_seg!r}')
    folder = Path(folder)
    listing = SourceListing()
    images: dict[str, str] = {}
    segs: dict[str, list[str]] = {}
    for path in expand_inputs([folder]):
        where = path.relative_to(folder).as_posix() if path != folder else path.name
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
            listing.problems.append(f"{where}: not a readable DICOM file; skipped")
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in (SEGMENTATION_STORAGE, LABELMAP_SEGMENTATION_STORAGE):
            references = _seg_references(ds)
            if not references:
                listing.problems.append(f"{where}: SEG references no source image; skipped")
            for uid in references:
                segs.setdefault(uid, []).append(str(path))
        elif sop_class in SUPPORTED_SOP_CLASSES:
            uid = str(ds.get("SOPInstanceUID", ""))
            if not uid or uid in images:
                listing.problems.append(f"{where}: missing or duplicate SOP Instance UID; skipped")
                continue
            images[uid] = str(path)
        else:
            listing.problems.append(f"{where}: SOP class {sop_class or 'missing'} is neither a "
                                    "radiograph nor a SEG; skipped")
    for uid, path in sorted(images.items()):
        if uid not in segs and missing_seg == "skip":
            listing.problems.append(f"SOP Instance {uid}: no SEG references it; skipped")
            continue
        listing.items.append({"id": uid, "image": path, "image_type": "dicom", "label_type": "seg",
                              "label": segs.get(uid, [])})
    for uid in sorted(set(segs) - set(images)):
        listing.problems.append(f"SOP Instance {uid}: referenced by a SEG but not found; "
                                "SEG ignored")
    return listing


def _seg_references(ds) -> list[str]:
    uids = []
    for series in ds.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            uids.append(str(instance.ReferencedSOPInstanceUID))
    return list(dict.fromkeys(uids))


def read_seg_mask(seg_paths: Iterable[str | Path], source_uid: str,
                  shape: tuple[int, int]) -> np.ndarray:
    """Union of all segments that the SEG instances hold for one source image, uint8 at ``shape``.

    Read with pydicom rather than highdicom's ``segread``, which rejects SEGs
    from projection radiographs whose Pixel Measures lack a slice thickness:
    decoding stays tolerant and relies only on the frame references.  A frame
    counts for the source when its Derivation Image Sequence names it, or
    when it names no source and the SEG references only this image.
    FRACTIONAL values count from 0.5 of the maximum.
    """
    from pydicom import dcmread

    mask = np.zeros(shape, np.uint8)
    for seg_path in seg_paths:
        ds = dcmread(seg_path)
        frames = np.asarray(ds.pixel_array)
        frames = frames.reshape(-1, *frames.shape[-2:])
        only_source = _seg_references(ds) == [source_uid]
        per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", [])) or [None] * len(frames)
        if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
            threshold = 0.5 * float(ds.get("MaximumFractionalValue", 255) or 255)
        else:
            threshold = 0.5
        for frame, group in zip(frames, per_frame, strict=False):
            sources = _frame_sources(group)
            if (sources and source_uid not in sources) or (not sources and not only_source):
                continue
            binary = (frame >= threshold).astype(np.uint8)
            if binary.shape != shape:
                binary = cv2.resize(binary, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
            mask |= binary
    return mask


def _frame_sources(group) -> list[str]:
    if group is None:
        return []
    return [str(source.ReferencedSOPInstanceUID)
            for derivation in group.get("DerivationImageSequence", [])
            for source in derivation.get("SourceImageSequence", [])]


# --------------------------------------------------------------------------- loading

def read_raster(path: str | Path) -> np.ndarray:
    """A JPEG/PNG radiograph as float32 (H, W) in [0, 1]; colour files are converted to grey."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"cannot decode image {Path(path).name}")
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels[..., :3], cv2.COLOR_BGR2GRAY)
    scale = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
    return np.clip(pixels.astype(np.float32) / scale, 0.0, 1.0)


class LoadSampled(Transform):
    """MONAI dict transform: an item -> ``{"id", "image", "label"}`` on the network grid.

    Deterministic (it is run once per item and cached); the image keeps one
    channel here so the cache stays small, and ``training_transforms`` /
    ``evaluation_transforms`` repeat it to the network's channels.
    """

    def __init__(self, size: int = 256) -> None:
        self.config = PreprocessConfig(size=size, channels=1)

    def __call__(self, item: dict) -> dict:
        if item["image_type"] == "render":
            seed, index, low, high = item["render"]
            sample = render_phantom_sample(seed, index, (low, high), self.config)
            return {"id": item["id"], "image": sample["image"],
                    "label": sample["label"].astype(np.uint8)}
        if item["image_type"] == "dicom":
            from xiqa.operators.loader import load_source_image

            pixels = load_source_image(item["image"]).pixels
        else:
            pixels = read_raster(item["image"])
        mask = self._mask(item, pixels.shape)
        size = self.config.size
        return {"id": item["id"], "image": to_network_input(pixels, self.config),
                "label": resize_mask(mask, size, size)[None]}

    @staticmethod
    def _mask(item: dict, shape: tuple[int, int]) -> np.ndarray:
        kind = item["label_type"]
        if kind == "objects":
            shapes = [ObjectShape(int(t), tuple(points)) for t, points in item["label"]]
            return draw_objects(shapes, *shape)
        if kind == "png":
            mask = cv2.imread(item["label"], cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"cannot decode mask {Path(item['label']).name}")
            return (mask > 0).astype(np.uint8)
        if kind == "seg":
            return read_seg_mask(item["label"], item["id"], shape)
        raise ValueError(f'Argument "item" has unknown label_type {kind!r}')


def prepare_samples(items: list[dict], size: int = 256, progress: bool = False,
                    on_problem: Callable[[str], None] | None = None, workers: int = 0
                    ) -> tuple[list[dict], list[str]]:
    """Run ``LoadSampled`` once per item; items that cannot be read are reported and dropped.

    ``workers`` > 0 decodes in that many threads (OpenCV and the JPEG 2000 /
    JPEG-LS decoders release the GIL); the result keeps the items' order.
    """
    load = LoadSampled(size)
    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=workers)
        outcomes: Iterable = executor.map(lambda item: _load_or_reason(load, item), items)
    else:
        executor = None
        outcomes = (_load_or_reason(load, item) for item in items)
    if progress and sys.stderr.isatty():  # a bar on a terminal only; in a log it writes CRs
        from tqdm import tqdm

        outcomes = tqdm(outcomes, total=len(items), desc="loading", unit="image", leave=False)
    samples, problems = [], []
    try:
        for item, (sample, reason) in zip(items, outcomes, strict=True):
            if sample is not None:
                samples.append(sample)
                continue
            problem = f"{item['id']}: cannot load ({reason}); skipped"
            problems.append(problem)
            if on_problem:
                on_problem(problem)
    finally:
        if executor is not None:
            executor.shutdown()
    return samples, problems


def _load_or_reason(load: LoadSampled, item: dict) -> tuple[dict | None, str]:
    from xiqa.operators.loader import RejectedInput

    try:
        return load(item), ""
    except RejectedInput as error:  # already one line that names no patient
        return None, error.reason[:200]
    except (OSError, ValueError, AttributeError, KeyError) as error:
        # Decoder errors of many kinds; the message is ours or the decoder's, never patient data.
        first_line = (str(error).splitlines() or [""])[0][:200]
        return None, f"{type(error).__name__}: {first_line}"


# --------------------------------------------------------------------------- MONAI transforms

def _clip_unit(values):
    return values.clamp(0.0, 1.0) if hasattr(values, "clamp") else np.clip(values, 0.0, 1.0)


def training_transforms(channels: int = 3, augment: bool = True, size: int = 256):
    """Random augmentation (geometry on image and label, intensity on the image) then channels.

    Mild on purpose: radiographs are taken in a standard pose (at most 7
    degrees, 10 % zoom, 4 % shift of the ``size`` grid), and the intensity
    changes mimic exposure and processing differences.
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        Lambdad,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RepeatChanneld,
    )

    keys = ["image", "label"]
    steps = [EnsureTyped(keys=keys, dtype=np.float32, track_meta=False)]
    if augment:
        steps += [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandAffined(keys=keys, prob=0.5, rotate_range=(np.deg2rad(7),), scale_range=(0.1, 0.1),
                        translate_range=(0.04 * size, 0.04 * size), mode=("bilinear", "nearest"),
                        padding_mode="zeros"),
            RandScaleIntensityd(keys="image", factors=0.15, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.5),
            RandGaussianNoised(keys="image", prob=0.2, std=0.01),
            Lambdad(keys="image", func=_clip_unit),
        ]
    steps += [RepeatChanneld(keys="image", repeats=channels),
              EnsureTyped(keys=keys, dtype=np.float32, track_meta=False)]
    return Compose(steps)


def evaluation_transforms(channels: int = 3):
    return training_transforms(channels, augment=False)
