"""Composite training images: real chest radiographs with synthetic foreign objects and exact masks.

A real radiograph without foreign bodies is the background (``data/real_cxr``);
radio-opaque objects are inserted with an attenuation model, so the network
sees real ribs, spine, clavicles, scapulae, skin lines, breast shadows,
markers and collimation edges as *background*, and only inserted metal,
wire and plastic as objects.

Every step works on one square canvas in the display domain (brighter = more
attenuation, as a MONOCHROME2 image is shown):

1. geometry: random crop, scale and rotation of the background;
2. hard negatives that are not foreign bodies, drawn unmasked: calcified nodules, burnt-in
   laterality markers and text, collimation borders, skin folds, breast
   shadows;
3. objects, drawn at ``SUPERSAMPLING`` times the canvas resolution and area
   averaged, so that edges carry partial-volume coverage.  An object's
   attenuation raises the pixel towards white, ``v' = v + c t (1 - v)`` with
   coverage ``c`` and opacity ``t`` (dense metal near 1, leads and lines
   lower); the mask is ``c >= 0.5``, exactly what the object covers;
4. acquisition: detector blur, a processing curve (gamma or sigmoid LUT),
   unsharp masking, anti-scatter grid lines, quantum noise and quantisation
   to 8-16 bits.

MONOCHROME1 is an encoding of the same display image (inverted stored
values); ``write_composite_dicom`` writes either, so the held-out set tests
the loader's inversion too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .corpus import MAX_SIDE as REAL_PLATE_SIDE
from .datasets import read_raster
from .real_objects import RealObject, paste_real_object

SUPERSAMPLING = 4
CANVAS = 512  # pixels of the square working canvas; about 0.8 mm per pixel on a 40 cm field

OBJECT_KINDS = (
    "coin",
    "button",
    "snap",
    "bra_hook",
    "underwire",
    "necklace",
    "chain",
    "ecg_electrode",
    "pacemaker",
    "icd",
    "sternal_wires",
    "surgical_clips",
    "fixation_plate",
    "spinal_screws",
    "central_line",
    "tube",
)


@dataclass(frozen=True)
class InsertedObject:
    kind: str
    pixels: int  # canvas pixels in the mask


@dataclass
class Composite:
    image: np.ndarray  # float32 (CANVAS, CANVAS) display domain in [0, 1]
    mask: np.ndarray  # uint8 (CANVAS, CANVAS)
    objects: list[InsertedObject] = field(default_factory=list)
    bits: int = 12


@dataclass(frozen=True)
class CompositeConfig:
    max_objects: int = 5
    empty_fraction: float = 0.15  # images with no object at all (pure hard negatives)
    inside_chest_fraction: float = 0.8  # objects placed over the thorax; the rest anywhere
    marker_probability: float = 0.7
    text_probability: float = 0.4
    collimation_probability: float = 0.5
    skin_fold_probability: float = 0.3
    breast_shadow_probability: float = 0.3
    grid_probability: float = 0.3
    washed_out_probability: float = 0.3
    calcification_probability: float = 0.3
    density_range: tuple[float, float] = (0.45, 1.0)  # opacity scale of the image's objects
    # composites that also get real devices cut from labelled plates (when a library is given)
    real_object_probability: float = 0.6
    max_real_objects: int = 6


# --------------------------------------------------------------------------- backgrounds


def load_manifest(folder: Path | str) -> list[dict]:
    return json.loads((Path(folder) / "manifest.json").read_text())["images"]


def backgrounds_for(folder: Path | str, split: str) -> list[tuple[str, np.ndarray]]:
    """(id, pixels) of every manifest image in ``split`` (train / validation / held_out_clean ...)."""
    folder = Path(folder)
    return [
        (entry["id"], read_raster(folder / entry["file"]))
        for entry in load_manifest(folder)
        if entry["split"] == split
    ]


def _place_background(
    rng: np.random.Generator, pixels: np.ndarray, size: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random crop (keeping most of the thorax), scale and small rotation onto a size x size canvas;
    ``mask`` (the plate's own objects) moves with the pixels."""
    height, width = pixels.shape
    keep = rng.uniform(0.82, 1.0)
    crop_h, crop_w = int(height * keep), int(width * keep)
    y0 = int(rng.integers(0, height - crop_h + 1))
    x0 = int(rng.integers(0, width - crop_w + 1))
    flip = rng.random() < 0.5
    angle, zoom = rng.uniform(-7, 7), rng.uniform(0.92, 1.1)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, zoom)

    def place(plane: np.ndarray, border: int) -> np.ndarray:
        crop = plane[y0 : y0 + crop_h, x0 : x0 + crop_w]
        canvas = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        if flip:
            canvas = canvas[:, ::-1]
        return cv2.warpAffine(np.ascontiguousarray(canvas), matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=border)

    image = place(pixels, cv2.BORDER_REFLECT)
    if mask is None:
        return image, None
    # the mask as coverage, cut at a half like every other label
    return image, place(mask.astype(np.float32), cv2.BORDER_CONSTANT) >= 0.5


# --------------------------------------------------------------------------- hard negatives


def _draw_markers(rng: np.random.Generator, image: np.ndarray, config: CompositeConfig) -> None:
    """Burnt-in lead markers ("L", "R") and annotation text near the corners: not foreign bodies."""
    size = image.shape[0]
    layer = np.zeros(image.shape, np.uint8)  # OpenCV draws text on 8-bit images only
    if rng.random() < config.marker_probability:
        letter = str(rng.choice(["L", "R", "L", "R", "PA", "AP"]))
        scale = rng.uniform(0.8, 1.8) * size / 512
        corner_x = rng.choice([rng.uniform(0.03, 0.2), rng.uniform(0.75, 0.9)])
        corner_y = rng.choice([rng.uniform(0.08, 0.25), rng.uniform(0.7, 0.95)])
        origin = (int(corner_x * size), int(corner_y * size))
        thickness = max(1, int(scale * 2.5))
        if rng.random() < 0.5:  # a marker in a square frame
            (text_w, text_h), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            cv2.rectangle(
                layer,
                (origin[0] - 4, origin[1] - text_h - 4),
                (origin[0] + text_w + 4, origin[1] + 6),
                128,
                -1,
            )
        cv2.putText(layer, letter, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    if rng.random() < config.text_probability:
        words = ["supine", "sitting", "portable", "erect", "Bettaufnahme", "14:32", "ICU 3", "mobile"]
        for _ in range(int(rng.integers(1, 3))):
            origin = (
                int(rng.uniform(0.02, 0.6) * size),
                int(rng.choice([rng.uniform(0.03, 0.08), rng.uniform(0.93, 0.98)]) * size),
            )
            cv2.putText(
                layer,
                str(rng.choice(words)),
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                rng.uniform(0.4, 0.8) * size / 512,
                255,
                1,
                cv2.LINE_AA,
            )
    burnt_in = layer.astype(np.float32) / 255 * rng.uniform(0.7, 1.0)
    np.maximum(image, burnt_in, out=image, where=layer > 12)


def _draw_soft_tissue(rng: np.random.Generator, image: np.ndarray, config: CompositeConfig) -> None:
    """Skin folds (a long soft edge) and breast shadows (a broad brighter lower-lung band)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if rng.random() < config.skin_fold_probability:
        side = rng.choice([-1, 1])
        x_edge = (
            0.5 + side * rng.uniform(0.2, 0.4) + 0.05 * np.sin(yy * rng.uniform(2, 6) + rng.uniform(0, 6))
        )
        step = 1 / (1 + np.exp(-(xx - x_edge) * side * size / rng.uniform(2, 6)))
        image += rng.uniform(0.02, 0.06) * step * ((yy > rng.uniform(0.2, 0.5)) & (yy < 0.95))
    if rng.random() < config.breast_shadow_probability:
        for side in (-1, 1):
            cx, cy = 0.5 + side * rng.uniform(0.18, 0.26), rng.uniform(0.68, 0.8)
            radius = rng.uniform(0.14, 0.2)
            # a soft-edged lower half-disc: the breast's lower contour is its only sharp edge
            inside = np.clip((radius - np.hypot(xx - cx, (yy - cy) * 1.3)) * size / 24, 0, 1)
            image += rng.uniform(0.03, 0.08) * inside * np.clip((yy - cy + 0.08) * 12, 0, 1)
    np.clip(image, 0, 1, out=image)


def _draw_calcifications(rng: np.random.Generator, image: np.ndarray) -> None:
    """Calcified granulomas and nodules: small, round, fuzzy and less dense than metal (anatomy).

    Either a few scattered ones, some of them dense, or a diffuse pinhead pattern over both lungs
    (miliary or reticulonodular disease): the shipped model took such pinheads on real plates for
    metal when it had seen only faint, scattered ones.
    """
    size = image.shape[0]
    layer = np.zeros_like(image)
    diffuse = rng.random() < 0.4
    for _ in range(int(rng.integers(20, 90)) if diffuse else int(rng.integers(1, 7))):
        centre = (int(size * rng.uniform(0.2, 0.8)), int(size * rng.uniform(0.18, 0.75)))
        radius = rng.uniform(0.8, 2.5) if diffuse else rng.uniform(1.0, 3.5)
        opacity = rng.uniform(0.05, 0.2) if diffuse else rng.uniform(0.08, 0.35)
        cv2.circle(layer, centre, max(1, int(radius * size / CANVAS)), float(opacity), -1)
    image += cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.6, 1.5) * size / CANVAS)
    np.clip(image, 0, 1, out=image)


def _collimate(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Shutter borders on one to four sides: flat bands with a straight edge; returns the exposed area."""
    size = image.shape[0]
    exposed = np.ones(image.shape, bool)
    level = rng.choice([rng.uniform(0.0, 0.08), rng.uniform(0.85, 1.0)])
    for side in rng.choice(4, size=int(rng.integers(1, 5)), replace=False):
        width = int(rng.uniform(0.02, 0.08) * size)
        band = (
            (slice(0, width), slice(None))
            if side == 0
            else (slice(size - width, size), slice(None))
            if side == 1
            else (slice(None), slice(0, width))
            if side == 2
            else (slice(None), slice(size - width, size))
        )
        image[band] = level
        exposed[band] = False
    return exposed


# --------------------------------------------------------------------------- objects (fine grid)


@dataclass
class _Layers:
    """Coverage of one object at SUPERSAMPLING x the canvas resolution, by opacity level."""

    size: int
    levels: dict[float, np.ndarray] = field(default_factory=dict)

    def layer(self, opacity: float) -> np.ndarray:
        key = round(float(opacity), 2)
        if key not in self.levels:
            self.levels[key] = np.zeros((self.size, self.size), np.uint8)
        return self.levels[key]


def _pt(point) -> tuple[int, int]:
    return int(round(point[0])), int(round(point[1]))


def _curve(
    rng: np.random.Generator,
    start,
    length: float,
    bend: float = 0.3,
    segments: int = 16,
    angle: float | None = None,
) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi) if angle is None else angle
    points = [np.asarray(start, np.float64)]
    for _ in range(segments):
        angle += rng.normal(0, bend)
        points.append(points[-1] + length / segments * np.array([math.cos(angle), math.sin(angle)]))
    return np.array(points)


def _polyline(layer: np.ndarray, points: np.ndarray, width: float) -> None:
    cv2.polylines(
        layer, [np.round(points).astype(np.int32)], False, 1, max(1, int(round(width))), lineType=cv2.LINE_8
    )


def _coin(rng, layers, centre, unit):
    radius = unit * rng.uniform(9, 14)
    cv2.circle(layers.layer(rng.uniform(0.85, 1.0)), _pt(centre), int(radius), 1, -1)


def _button(rng, layers, centre, unit):
    radius = unit * rng.uniform(5, 10)
    layer = layers.layer(rng.uniform(0.35, 0.75))
    cv2.circle(layer, _pt(centre), int(radius), 1, -1)
    holes = int(rng.choice([2, 4]))
    for index in range(holes):
        angle = 2 * math.pi * index / holes + rng.uniform(0, 1)
        hole = (centre[0] + 0.35 * radius * math.cos(angle), centre[1] + 0.35 * radius * math.sin(angle))
        cv2.circle(layer, _pt(hole), max(1, int(radius * 0.15)), 0, -1)


def _snap(rng, layers, centre, unit):
    radius = unit * rng.uniform(4, 7)
    cv2.circle(layers.layer(rng.uniform(0.8, 1.0)), _pt(centre), int(radius), 1, max(2, int(radius * 0.4)))


def _bra_hook(rng, layers, centre, unit):
    layer = layers.layer(rng.uniform(0.75, 1.0))
    angle = rng.uniform(-0.3, 0.3)
    for index in range(int(rng.integers(2, 4))):
        offset = np.array([0.0, index * unit * rng.uniform(5, 7)])
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        box = np.array([[-1, -0.4], [1, -0.4], [1, 0.4], [-1, 0.4]]) * unit * rng.uniform(4, 6)
        corners = (box + offset) @ rotation.T + np.asarray(centre)
        cv2.polylines(layer, [np.round(corners).astype(np.int32)], True, 1, max(2, int(unit * 1.5)))


def _underwire(rng, layers, centre, unit):
    layer = layers.layer(rng.uniform(0.7, 0.95))
    size = layers.size
    for side in (-1, 1) if rng.random() < 0.7 else (rng.choice([-1, 1]),):
        cx, cy = size * (0.5 + side * rng.uniform(0.17, 0.25)), size * rng.uniform(0.62, 0.75)
        axes = (int(unit * rng.uniform(35, 50)), int(unit * rng.uniform(25, 40)))
        cv2.ellipse(layer, _pt((cx, cy)), axes, rng.uniform(-15, 15), 10, 170, 1, max(2, int(unit * 1.6)))


def _beads(rng, layers, centre, unit, link: bool):
    size = layers.size
    neck = np.array([size * rng.uniform(0.45, 0.55), size * rng.uniform(0.02, 0.12)])
    span = np.array([unit * rng.uniform(40, 70), unit * rng.uniform(50, 110)])
    angles = np.linspace(0.1 * math.pi, 0.9 * math.pi, int(rng.integers(40, 80)))
    path = neck + np.stack([span[0] * np.cos(angles), span[1] * np.sin(angles)], axis=1)
    layer = layers.layer(rng.uniform(0.7, 1.0))
    if link:  # a chain: small open links along the path
        for a, b in zip(path[:-1], path[1:], strict=True):
            middle = (a + b) / 2
            direction = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
            cv2.ellipse(
                layer,
                _pt(middle),
                (max(2, int(np.linalg.norm(b - a) * 0.6)), max(1, int(unit))),
                direction,
                0,
                360,
                1,
                max(1, int(unit * 0.8)),
            )
    else:
        bead = max(2, int(unit * rng.uniform(1.5, 3.5)))
        for position in path[::2]:
            cv2.circle(layer, _pt(position), bead, 1, -1)
        _polyline(layer, path, unit * 0.6)
    if rng.random() < 0.5:  # a pendant
        cv2.circle(
            layers.layer(0.95),
            _pt(path[len(path) // 2] + [0, unit * 6]),
            int(unit * rng.uniform(4, 8)),
            1,
            -1,
        )


def _necklace(rng, layers, centre, unit):
    _beads(rng, layers, centre, unit, link=False)


def _chain(rng, layers, centre, unit):
    _beads(rng, layers, centre, unit, link=True)


def _ecg_electrode(rng, layers, centre, unit):
    # the foam pad is nearly radiolucent: drawn (faint) but not part of the radio-opaque object
    pad = layers.layer(0.06)
    cv2.circle(pad, _pt(centre), int(unit * rng.uniform(14, 20)), 1, -1)
    stud = layers.layer(rng.uniform(0.85, 1.0))
    cv2.circle(stud, _pt(centre), int(unit * rng.uniform(3.5, 5.5)), 1, -1)
    if rng.random() < 0.8:
        lead = _curve(rng, centre, unit * rng.uniform(60, 220), bend=0.25)
        _polyline(layers.layer(rng.uniform(0.3, 0.8)), lead, unit * rng.uniform(1.6, 3))


def _rounded_outline(centre: np.ndarray, half: np.ndarray, angle: float, roundness: float) -> np.ndarray:
    """Closed outline of a rounded can: a superellipse (2 = ellipse, larger = boxier), rotated."""
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    x = half[0] * np.sign(cos) * np.abs(cos) ** (2 / roundness)
    y = half[1] * np.sign(sin) * np.abs(sin) ** (2 / roundness)
    rotation = math.radians(angle)
    return centre + np.stack(
        [x * math.cos(rotation) - y * math.sin(rotation), x * math.sin(rotation) + y * math.cos(rotation)], 1
    )


def _device(rng, layers, unit, *, can: tuple[float, float], leads: int):
    """A cardiac implant as radiographs show it: a grey titanium can (about 4-6 cm, rounded) with a
    denser rim, a header with the lead connectors, circuit parts and a battery inside, and leads
    running to the heart."""
    size = layers.size
    side = rng.choice([-1, 1])
    centre = np.array([size * (0.5 + side * rng.uniform(0.18, 0.32)), size * rng.uniform(0.15, 0.5)])
    half = np.array(can) * unit * rng.uniform(0.85, 1.15, 2)
    angle = rng.uniform(-35, 35)
    outline = _rounded_outline(centre, half, angle, rng.uniform(2.2, 5.0))
    housing = rng.uniform(0.3, 0.65)  # the can itself is thin metal: grey, not white
    cv2.fillPoly(layers.layer(housing), [np.round(outline).astype(np.int32)], 1)
    _polyline(layers.layer(min(1.0, housing + 0.2)), np.vstack([outline, outline[:1]]), unit * 1.5)
    rotation = math.radians(angle)
    along, across = np.array([math.cos(rotation), math.sin(rotation)]), np.array([-math.sin(rotation),
                                                                                 math.cos(rotation)])

    def part(offset_x: float, offset_y: float, width: float, height: float, opacity: float) -> None:
        middle = centre + along * offset_x * half[0] + across * offset_y * half[1]
        box = cv2.boxPoints(((float(middle[0]), float(middle[1])),
                             (float(width * half[0]), float(height * half[1])), angle))
        cv2.fillPoly(layers.layer(opacity), [np.round(box).astype(np.int32)], 1)

    header_top = -1.0 if rng.random() < 0.5 else 1.0  # connector block on one end of the can
    part(0.0, header_top * 0.8, 1.1, 0.35, rng.uniform(0.45, 0.75))
    for _ in range(int(rng.integers(2, 5))):
        part(rng.uniform(-0.4, 0.4), header_top * rng.uniform(0.7, 0.9), 0.12, 0.12, rng.uniform(0.85, 1.0))
    part(0.0, -header_top * rng.uniform(0.3, 0.45), rng.uniform(1.1, 1.5), rng.uniform(0.6, 0.9),
         rng.uniform(0.7, 0.95))  # battery
    for _ in range(int(rng.integers(3, 10))):  # circuit parts between header and battery
        part(rng.uniform(-0.6, 0.6), header_top * rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.4),
             rng.uniform(0.06, 0.25), rng.uniform(0.75, 1.0))
    header = centre + across * header_top * 0.8 * half[1]
    heart = np.array([size * rng.uniform(0.45, 0.6), size * rng.uniform(0.55, 0.7)])
    for _ in range(leads):
        target = heart + rng.normal(0, unit * 15, 2)
        path = np.linspace(header, target, 32)
        path[:, 0] += np.sin(np.linspace(0, math.pi, 32)) * unit * rng.uniform(-30, 30)
        path[:, 1] -= np.sin(np.linspace(0, math.pi, 32)) * unit * rng.uniform(0, 25)
        if rng.random() < 0.5:  # spare lead coiled beside the can
            loop = rng.uniform(8, 16) * unit
            turn = np.linspace(0, 2 * math.pi, 24)
            coil = header + np.stack([np.cos(turn), np.sin(turn)], 1) * loop + across * header_top * loop
            path = np.vstack([coil, path])
        _polyline(layers.layer(rng.uniform(0.4, 0.95)), path, unit * rng.uniform(1.2, 2.8))
        cv2.circle(layers.layer(1.0), _pt(path[-1]), int(unit * 2.5), 1, -1)  # lead tip


def _pacemaker(rng, layers, centre, unit):
    _device(rng, layers, unit, can=(28, 24), leads=int(rng.integers(1, 3)))


def _icd(rng, layers, centre, unit):
    _device(rng, layers, unit, can=(36, 29), leads=int(rng.integers(1, 4)))


def _sternal_wires(rng, layers, centre, unit):
    size = layers.size
    x = size * rng.uniform(0.47, 0.53)
    layer = layers.layer(rng.uniform(0.85, 1.0))
    top = size * rng.uniform(0.22, 0.3)
    for index in range(int(rng.integers(4, 8))):
        y = top + index * unit * rng.uniform(22, 30)
        half_w, half_h = unit * rng.uniform(8, 13), unit * rng.uniform(3, 6)
        if rng.random() < 0.5:  # figure of eight
            cv2.line(
                layer,
                _pt((x - half_w, y - half_h)),
                _pt((x + half_w, y + half_h)),
                1,
                max(2, int(unit * 1.5)),
            )
            cv2.line(
                layer,
                _pt((x - half_w, y + half_h)),
                _pt((x + half_w, y - half_h)),
                1,
                max(2, int(unit * 1.5)),
            )
        else:
            cv2.ellipse(
                layer,
                _pt((x, y)),
                (int(half_w), int(half_h)),
                rng.uniform(-10, 10),
                0,
                360,
                1,
                max(2, int(unit * 1.5)),
            )
        cv2.circle(layer, _pt((x + half_w * rng.choice([-1, 1]), y)), int(unit * 2.5), 1, -1)  # twisted knot


def _surgical_clips(rng, layers, centre, unit):
    layer = layers.layer(rng.uniform(0.8, 1.0))
    for _ in range(int(rng.integers(1, 6))):
        position = np.asarray(centre) + rng.normal(0, unit * 18, 2)
        length, angle = unit * rng.uniform(6, 11), rng.uniform(0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        spread = np.array([-direction[1], direction[0]]) * unit * rng.uniform(0.8, 2.5)
        cv2.line(
            layer,
            _pt(position - spread),
            _pt(position + length * direction - spread * 0.3),
            1,
            max(2, int(unit * 1.4)),
        )
        cv2.line(
            layer,
            _pt(position + spread),
            _pt(position + length * direction + spread * 0.3),
            1,
            max(2, int(unit * 1.4)),
        )


def _fixation_plate(rng, layers, centre, unit):
    length, width = unit * rng.uniform(50, 120), unit * rng.uniform(7, 11)
    angle = rng.uniform(0, 180)
    box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (length, width), angle))
    plate = layers.layer(rng.uniform(0.8, 0.95))
    cv2.fillPoly(plate, [np.round(box).astype(np.int32)], 1)
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    screw = layers.layer(1.0)
    for step in np.linspace(-0.4, 0.4, int(rng.integers(3, 7))):
        head = np.asarray(centre) + step * length * direction
        cv2.circle(screw, _pt(head), int(width * 0.45), 1, -1)


def _spinal_screws(rng, layers, centre, unit):
    size = layers.size
    x = size * rng.uniform(0.47, 0.53)
    top = size * rng.uniform(0.3, 0.6)
    levels = int(rng.integers(2, 6))
    rod = layers.layer(rng.uniform(0.85, 1.0))
    spacing = unit * rng.uniform(22, 30)
    for side in (-1, 1):
        rod_x = x + side * unit * rng.uniform(14, 20)
        cv2.line(rod, _pt((rod_x, top)), _pt((rod_x, top + (levels - 1) * spacing)), 1, max(2, int(unit * 4)))
        for level in range(levels):
            head = np.array([rod_x, top + level * spacing])
            shaft = head + np.array([-side * unit * rng.uniform(10, 16), unit * rng.uniform(-2, 2)])
            cv2.line(rod, _pt(head), _pt(shaft), 1, max(2, int(unit * 4)))
            cv2.circle(rod, _pt(head), int(unit * 5), 1, -1)


def _central_line(rng, layers, centre, unit):
    size = layers.size
    side = rng.choice([-1, 1])
    start = np.array([size * (0.5 + side * rng.uniform(0.15, 0.3)), size * rng.uniform(0.0, 0.12)])
    via = np.array([size * (0.5 + side * rng.uniform(0.05, 0.12)), size * rng.uniform(0.2, 0.28)])
    tip = np.array([size * (0.5 + side * rng.uniform(0.0, 0.05)), size * rng.uniform(0.35, 0.48)])
    t = np.linspace(0, 1, 30)[:, None]
    path = (1 - t) ** 2 * start + 2 * (1 - t) * t * via + t**2 * tip
    _polyline(layers.layer(rng.uniform(0.35, 0.65)), path, unit * rng.uniform(2.2, 3.5))
    if rng.random() < 0.5:  # an outside section looping over the shoulder
        outside = _curve(rng, start, unit * rng.uniform(40, 120), bend=0.3, angle=-math.pi / 2)
        _polyline(layers.layer(rng.uniform(0.35, 0.65)), outside, unit * rng.uniform(2.2, 3.5))

def _normals(path: np.ndarray) -> np.ndarray:
    """Unit normals of a polyline, one per point."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _tube(rng, layers, centre, unit):
    """An endotracheal, feeding or chest-drain tube.

    Endotracheal and feeding tubes run down the mediastinum (``centre``'s x, found on the placed
    background by :func:`_mediastinum_x`). On real ICU plates such a tube shows mostly as its two
    plastic walls seen edge on (tram lines) with a faint radio-opaque stripe, far less conspicuous
    than a wire: a model that learnt only a bright stripe missed nearly every real one (median
    peak probability 0.15 over Hannover's 89 labelled endotracheal tubes). The walls and the
    stripe are the object; the lumen between them is drawn, not masked.
    """
    size = layers.size
    kind = rng.choice(["endotracheal", "feeding", "drain"])
    if kind == "drain":
        side = rng.choice([-1, 1])
        start = np.array([size * (0.5 + side * rng.uniform(0.38, 0.48)), size * rng.uniform(0.55, 0.8)])
        via = np.array([size * (0.5 + side * rng.uniform(0.3, 0.4)), size * rng.uniform(0.35, 0.5)])
        end = np.array([size * (0.5 + side * rng.uniform(0.15, 0.3)), size * rng.uniform(0.15, 0.3)])
        diameter = unit * rng.uniform(8, 12)
    else:
        x = centre[0] + size * rng.uniform(-0.02, 0.02)
        start = np.array([x + size * rng.uniform(-0.04, 0.04), size * rng.uniform(-0.05, 0.03)])
        via = np.array([x + size * rng.uniform(-0.015, 0.015), size * rng.uniform(0.15, 0.25)])
        if kind == "endotracheal":  # tip above the carina; about 10 mm across
            end = np.array([x + size * rng.uniform(-0.02, 0.02), size * rng.uniform(0.25, 0.4)])
            diameter = unit * rng.uniform(10, 15)
        else:  # down the oesophagus, through the diaphragm, into the stomach (the plate may be mirrored)
            side = rng.choice([-1, 1])
            end = np.array([x + size * side * rng.uniform(0.04, 0.16), size * rng.uniform(0.75, 1.0)])
            diameter = unit * rng.uniform(5, 8)
    t = np.linspace(0, 1, 60)[:, None]
    path = (1 - t) ** 2 * start + 2 * (1 - t) * t * via + t**2 * end
    _polyline(layers.layer(rng.uniform(0.03, 0.08)), path, diameter)
    wall_opacity, wall = rng.uniform(0.2, 0.28), unit * rng.uniform(1.2, 2.5)
    for side in (-1, 1):
        _polyline(layers.layer(wall_opacity), path + side * (diameter - wall) / 2 * _normals(path), wall)
    if rng.random() < 0.8:
        stripe = path + _normals(path) * diameter * rng.uniform(-0.3, 0.3)
        _polyline(layers.layer(rng.uniform(0.2, 0.45)), stripe, unit * rng.uniform(1.0, 2.0))


def _mediastinum_x(image: np.ndarray) -> float:
    """The canvas column of the mediastinum on a placed frontal chest: the brightest band of the
    upper thorax (the spine and the vessels between the dark lung fields) in the middle 40 %."""
    size = image.shape[1]
    profile = image[int(size * 0.15) : int(size * 0.6)].mean(axis=0)
    profile = cv2.GaussianBlur(profile.reshape(1, -1).astype(np.float32), (0, 0), size * 0.03).ravel()
    low, high = int(size * 0.3), int(size * 0.7)
    return float(low + np.argmax(profile[low:high]))


_DRAWERS: dict[str, Callable] = {
    "coin": _coin,
    "button": _button,
    "snap": _snap,
    "bra_hook": _bra_hook,
    "underwire": _underwire,
    "necklace": _necklace,
    "chain": _chain,
    "ecg_electrode": _ecg_electrode,
    "pacemaker": _pacemaker,
    "icd": _icd,
    "sternal_wires": _sternal_wires,
    "surgical_clips": _surgical_clips,
    "fixation_plate": _fixation_plate,
    "spinal_screws": _spinal_screws,
    "central_line": _central_line,
    "tube": _tube,
}
# how often each kind is drawn: ECG electrodes and lines are the commonest devices on a chest film
_KIND_WEIGHTS = np.array([1, 1, 1, 0.6, 0.5, 0.8, 0.6, 2.5, 1.6, 1.0, 0.6, 0.7, 0.5, 0.4, 1.2, 0.8])


def _insert_object(
    rng: np.random.Generator,
    image: np.ndarray,
    kind: str,
    centre: np.ndarray,
    blur_sigma: float,
    density: float = 1.0,
) -> np.ndarray:
    """Attenuate ``image`` in place by one object; returns its canvas mask (coverage >= 0.5).

    ``density`` scales every opacity: the same device looks near white on a hard-processed plate
    and only light grey on a soft, washed-out one.
    """
    size = image.shape[0]
    fine = size * SUPERSAMPLING
    layers = _Layers(fine)
    unit = SUPERSAMPLING * size / CANVAS  # fine pixels per canvas pixel at the reference canvas
    _DRAWERS[kind](rng, layers, centre * SUPERSAMPLING, unit)
    mask = np.zeros((size, size), bool)
    for opacity, layer in sorted(layers.levels.items()):
        coverage = cv2.resize(layer.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        if opacity >= 0.2:  # radio-opaque parts; faint pads are drawn but are not the object
            mask |= coverage >= 0.5
        if blur_sigma > 0:
            coverage = cv2.GaussianBlur(coverage, (0, 0), blur_sigma)
        image += coverage * opacity * density * (1.0 - image)
    return mask


# --------------------------------------------------------------------------- acquisition


def _acquire(rng: np.random.Generator, image: np.ndarray, config: CompositeConfig) -> tuple[np.ndarray, int]:
    size = image.shape[0]
    if rng.random() < config.grid_probability:  # anti-scatter grid lines
        period = rng.uniform(2.2, 4.5)
        lines = 0.5 + 0.5 * np.sin(2 * math.pi * np.arange(size) / period + rng.uniform(0, 6))
        image = image * (1 - rng.uniform(0.01, 0.03) * lines)[None, :]
    curve = rng.choice(["gamma", "sigmoid", "none"])
    if curve == "gamma":
        image = np.clip(image, 0, 1) ** rng.uniform(0.75, 1.35)
    elif curve == "sigmoid":
        centre, slope = rng.uniform(0.4, 0.6), rng.uniform(5, 10)
        low, high = 1 / (1 + math.exp(slope * centre)), 1 / (1 + math.exp(-slope * (1 - centre)))
        image = (1 / (1 + np.exp(-slope * (image - centre))) - low) / (high - low)
    if rng.random() < 0.5:  # unsharp masking, the usual CR/DX edge enhancement
        sigma = rng.uniform(4, 20) * size / CANVAS
        image = image + rng.uniform(0.2, 1.0) * (image - cv2.GaussianBlur(image, (0, 0), sigma))
    if rng.random() < config.washed_out_probability:  # soft, low-contrast processing (grey plates)
        image = rng.uniform(0.15, 0.35) + rng.uniform(0.4, 0.7) * image
    image = image * rng.uniform(0.85, 1.05) + rng.uniform(-0.03, 0.03)
    noise = rng.uniform(0.003, 0.02)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32) * np.sqrt(np.clip(image, 0.05, 1))
    bits = int(rng.choice([8, 10, 12, 14, 16]))
    levels = 2**bits - 1
    return (np.round(np.clip(image, 0, 1) * levels) / levels).astype(np.float32), bits


def _object_centre(rng: np.random.Generator, size: int, inside_chest: bool) -> np.ndarray:
    if inside_chest:  # over the thorax of a centred frontal chest
        return np.array([size * rng.uniform(0.2, 0.8), size * rng.uniform(0.18, 0.8)])
    return np.array([size * rng.uniform(0.05, 0.95), size * rng.uniform(0.03, 0.97)])


def make_composite(
    rng: np.random.Generator,
    background: np.ndarray,
    config: CompositeConfig = CompositeConfig(),
    kinds: list[str] | None = None,
    size: int = CANVAS,
    real_objects: Sequence[RealObject] = (),
) -> Composite:
    """One composite radiograph from a real ``background`` (display domain, any size).

    ``kinds`` fixes the inserted objects (random ones when None); ``real_objects`` is a library
    of real devices cut from labelled plates (``training.real_objects``), of which some may be
    pasted too, each of kind ``real_<category>``.
    """
    if kinds is None:
        count = 0 if rng.random() < config.empty_fraction else int(rng.integers(1, config.max_objects + 1))
        kinds = [
            str(kind) for kind in rng.choice(OBJECT_KINDS, size=count, p=_KIND_WEIGHTS / _KIND_WEIGHTS.sum())
        ]
    unknown = set(kinds) - set(OBJECT_KINDS)
    if unknown:
        raise ValueError(f'Argument "kinds" has unknown kinds {sorted(unknown)}; allowed: {OBJECT_KINDS}')
    image = _place_background(rng, background, size)[0].astype(np.float32)
    _draw_soft_tissue(rng, image, config)
    _draw_markers(rng, image, config)
    if rng.random() < config.calcification_probability:
        _draw_calcifications(rng, image)
    blur_sigma = rng.uniform(0.2, 0.8) * size / CANVAS  # detector blur, canvas pixels
    density = rng.uniform(*config.density_range)
    mask = np.zeros((size, size), bool)
    objects = []
    for kind in kinds:
        centre = _object_centre(rng, size, rng.random() < config.inside_chest_fraction)
        if kind == "tube":
            centre[0] = _mediastinum_x(image)
        own = _insert_object(rng, image, kind, centre, blur_sigma, density)
        objects.append(InsertedObject(kind, int(own.sum())))
        mask |= own
    if real_objects and rng.random() < config.real_object_probability:
        for index in rng.integers(len(real_objects), size=int(rng.integers(1, config.max_real_objects + 1))):
            real = real_objects[int(index)]
            own = paste_real_object(rng, image, real, REAL_PLATE_SIDE, density)
            if own.any():
                objects.append(InsertedObject(f"real_{real.category}", int(own.sum())))
                mask |= own
    if rng.random() < config.collimation_probability:
        mask &= _collimate(rng, image)  # metal under a shutter is not imaged
    image, bits = _acquire(rng, image, config)
    return Composite(image, mask.astype(np.uint8), objects, bits)


# --------------------------------------------------------------------------- training samples


def network_sample(image: np.ndarray, mask: np.ndarray, kinds: list[str], size: int = 256) -> dict:
    """{"image": (3, size, size), "label": (1, size, size), "kinds"}: ``image`` (display domain) and
    its object ``mask`` on the network grid, made with the app's own pre-processing."""
    from xiqa.operators.preprocess import PreprocessConfig, resize_mask, to_network_input

    return {
        "image": to_network_input(image, PreprocessConfig(size=size)),
        "label": resize_mask(mask, size, size)[None].astype(np.float32),
        "kinds": kinds,
    }


def composite_sample(
    rng: np.random.Generator,
    background: np.ndarray,
    config: CompositeConfig = CompositeConfig(),
    size: int = 256,
    real_objects: Sequence[RealObject] = (),
) -> dict:
    """One composite as a sample on the network grid (:func:`network_sample`)."""
    composite = make_composite(rng, background, config, real_objects=real_objects)
    kinds = [inserted.kind for inserted in composite.objects]
    return network_sample(composite.image, composite.mask, kinds, size)


def real_plate_sample(
    rng: np.random.Generator,
    pixels: np.ndarray,
    mask: np.ndarray,
    config: CompositeConfig = CompositeConfig(),
    size: int = 256,
) -> dict:
    """A training sample from a labelled real plate itself, its own devices (``mask``, from
    ``real_objects.plate_mask``) the label: moved, marked, collimated and processed like a
    composite, so the network sees real devices where they really lie, among real clutter."""
    image, placed = _place_background(rng, pixels, CANVAS, mask)
    image = image.astype(np.float32)
    _draw_markers(rng, image, config)
    if rng.random() < config.collimation_probability:
        placed &= _collimate(rng, image)
    image, _ = _acquire(rng, image, config)
    return network_sample(image, placed, ["real_plate"], size)


def plate_as_is_sample(pixels: np.ndarray, mask: np.ndarray, size: int = 256) -> dict:
    """A labelled real plate as the app sees it (validation: nothing moved or processed)."""
    return network_sample(pixels, mask, ["real_plate"] if mask.any() else [], size)


def composite_samples(
    backgrounds: list[np.ndarray],
    seed: int,
    per_background: int,
    config: CompositeConfig = CompositeConfig(),
    real_objects: Sequence[RealObject] = (),
) -> list[dict]:
    """A fixed set (validation, held-out): ``per_background`` composites of each background."""
    return [
        composite_sample(
            np.random.default_rng([seed, index, copy]), background, config, real_objects=real_objects
        )
        for index, background in enumerate(backgrounds)
        for copy in range(per_background)
    ]


class CompositeStream:
    """A map-style dataset that draws a new composite at every access (a fresh set each epoch).

    The random stream comes from torch's generator, so ``monai.utils.set_determinism`` makes a
    run repeatable; a share of the samples are phantoms, so the phantom fixtures keep working,
    and a share are labelled real plates (``real_plates``: (pixels, mask) pairs) when given.
    """

    def __init__(
        self,
        backgrounds: list[np.ndarray],
        samples_per_epoch: int,
        phantom_share: float = 0.2,
        config: CompositeConfig = CompositeConfig(),
        real_objects: Sequence[RealObject] = (),
        real_plates: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        real_plate_share: float = 0.0,
    ) -> None:
        if not backgrounds:
            raise ValueError('Argument "backgrounds" must not be empty')
        if real_plate_share and not real_plates:
            raise ValueError('Argument "real_plate_share" needs "real_plates"')
        self.backgrounds, self.samples_per_epoch = backgrounds, samples_per_epoch
        self.phantom_share, self.config = phantom_share, config
        self.real_objects = real_objects
        self.real_plates, self.real_plate_share = real_plates, real_plate_share

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        import torch

        from .datasets import render_phantom_sample

        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rng = np.random.default_rng([seed, index])
        draw = rng.random()
        if draw < self.phantom_share:
            sample = render_phantom_sample(seed, index)
        elif draw < self.phantom_share + self.real_plate_share:
            pixels, mask = self.real_plates[int(rng.integers(len(self.real_plates)))]
            sample = real_plate_sample(rng, pixels, mask, self.config)
        else:
            sample = composite_sample(
                rng,
                self.backgrounds[int(rng.integers(len(self.backgrounds)))],
                self.config,
                real_objects=self.real_objects,
            )
        return {"image": sample["image"], "label": sample["label"]}
