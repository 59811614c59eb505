"""Real devices cut from labelled plates and pasted onto clean ones (copy-paste augmentation).

A label drawn by eye is a box or a polyline near the object, a few pixels off.  The object
itself is what stands out above the local background there: the white top-hat of the plate
(the plate minus its grey opening with a structuring element wider than the object is thick)
inside a band around the label, above an Otsu threshold of that band.  Its opacity is taken
the way ``composite`` attenuates: ``a = (plate - background) / (1 - background)``, so pasting
``image += a * (1 - image)`` onto another plate gives the device the contrast it had.

Only the object's own pixels move, so objects the labeller missed on the source plate never
become unlabelled positives, and the mask of a pasted object is exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .corpus import CorpusImage, LabelledObject

#: stored-plate pixels (512 px plates): how far a label drawn by eye may lie from its object;
#: a line drawn along a lead strays further than a box drawn around a snap
BOX_TOLERANCE, LINE_TOLERANCE = 6, 9
#: grey opening for lines: leads and tubes (2-5 px) vanish in it, ribs and vessels' walls less so
LINE_OPENING = 9
MIN_OBJECT_PIXELS = 6
#: pieces of a line's mask smaller than this are texture the band caught, not the line
MIN_LINE_PIECE = 8


@dataclass(frozen=True)
class RealObject:
    category: str
    source_id: str
    opacity: np.ndarray  # float32 (h, w) in [0, 1], zero outside the object
    mask: np.ndarray  # bool (h, w)
    top_left: tuple[float, float]  # (y, x) as fractions of the source plate


def label_band(obj: LabelledObject, shape: tuple[int, int]) -> np.ndarray:
    band = np.zeros(shape, np.uint8)
    points = np.round(np.array(obj.points)).astype(np.int32)
    if obj.shape == "box":
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        cv2.rectangle(band, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness=-1)
    else:
        cv2.polylines(band, [points], False, 1, thickness=1)
    tolerance = BOX_TOLERANCE if obj.shape == "box" else LINE_TOLERANCE
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1,) * 2)
    return cv2.dilate(band, kernel) > 0


def _opening_size(obj: LabelledObject) -> int:
    if obj.shape == "box":
        points = np.array(obj.points)
        side = float((points.max(axis=0) - points.min(axis=0)).max())
        return int(np.clip(side * 1.5, LINE_OPENING, 121)) | 1
    return LINE_OPENING


def object_mask(pixels: np.ndarray, obj: LabelledObject) -> tuple[np.ndarray, np.ndarray]:
    """(mask, background) of one labelled object on ``pixels`` (float, [0, 1], display domain)."""
    size = _opening_size(obj)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    background = cv2.morphologyEx(pixels.astype(np.float32), cv2.MORPH_OPEN, kernel)
    background = cv2.GaussianBlur(background, (0, 0), 1.5)
    top_hat = np.clip(pixels - background, 0, None)
    band = label_band(obj, pixels.shape)
    values = top_hat[band]
    if values.size < MIN_OBJECT_PIXELS or values.max() <= 0.02:
        return np.zeros(pixels.shape, bool), background
    scaled = np.round(values / values.max() * 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu / 255 * values.max(), 0.02)
    mask = band & (top_hat > threshold)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    smallest = 3 if obj.shape == "box" else MIN_LINE_PIECE
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= smallest]
    return np.isin(labels, keep), background


def extract_real_objects(image: CorpusImage, pixels: np.ndarray) -> list[RealObject]:
    """Every labelled object of ``image`` with enough pixels, as an opacity patch and its mask."""
    objects = []
    for obj in image.objects:
        mask, background = object_mask(pixels, obj)
        if mask.sum() < MIN_OBJECT_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = mask[y0:y1, x0:x1]
        plate, under = pixels[y0:y1, x0:x1], background[y0:y1, x0:x1]
        opacity = np.where(crop, np.clip((plate - under) / np.clip(1 - under, 0.05, 1), 0, 1), 0)
        objects.append(
            RealObject(
                obj.category,
                image.id,
                opacity.astype(np.float32),
                crop,
                (y0 / pixels.shape[0], x0 / pixels.shape[1]),
            )
        )
    return objects


def plate_mask(objects: list[RealObject], shape: tuple[int, int]) -> np.ndarray:
    """Where ``objects`` (all cut from one plate of ``shape``) lie on that plate: the training
    label of the real plate itself."""
    mask = np.zeros(shape, bool)
    for real in objects:
        y0, x0 = round(real.top_left[0] * shape[0]), round(real.top_left[1] * shape[1])
        height, width = real.mask.shape
        mask[y0 : y0 + height, x0 : x0 + width] |= real.mask
    return mask


def paste_real_object(
    rng: np.random.Generator, image: np.ndarray, real: RealObject, source_side: int, density: float
) -> np.ndarray:
    """Attenuate ``image`` (square canvas, in place) by ``real`` near where it lay; returns its mask."""
    size = image.shape[0]
    scale = size / source_side * rng.uniform(0.85, 1.15)
    height, width = real.mask.shape
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    opacity = cv2.resize(real.opacity, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(real.mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST) > 0
    if rng.random() < 0.5:  # a device on the other side is as plausible
        opacity, mask = opacity[:, ::-1], mask[:, ::-1]
        left = 1 - real.top_left[1] - width / source_side
    else:
        left = real.top_left[1]
    top = real.top_left[0] + rng.uniform(-0.06, 0.06)
    left += rng.uniform(-0.06, 0.06)
    y0, x0 = int(round(top * size)), int(round(left * size))
    y0 = int(np.clip(y0, -new_h // 2, size - new_h // 2))
    x0 = int(np.clip(x0, -new_w // 2, size - new_w // 2))
    # the part of the patch that lands on the canvas
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    dy1, dx1 = min(size, y0 + new_h), min(size, x0 + new_w)
    placed = np.zeros(image.shape, bool)
    if dy1 <= dy0 or dx1 <= dx0:
        return placed
    patch = opacity[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0] * density
    region = image[dy0:dy1, dx0:dx1]
    region += patch * (1.0 - region)
    placed[dy0:dy1, dx0:dx1] = mask[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    return placed
