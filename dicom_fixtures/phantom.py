"""Synthetic chest radiographs with foreign objects and exact ground-truth masks.

Everything is drawn in a display domain where larger values are brighter (more
attenuation), the way a MONOCHROME2 radiograph is shown: air is dark, lungs are
dark grey, soft tissue, bone and mediastinum are brighter and metal is nearly
white.  Anatomy is drawn on a coarse canvas (it is smooth anyway) and resized;
objects are drawn at full resolution without anti-aliasing so that the mask
says exactly which pixels carry an object.

The object kinds follow what Object-CXR annotates.  Each planted object keeps
the Object-CXR style annotation (0 rectangle, 1 ellipse, 2 polygon) that a
human annotator would have drawn around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

OBJECT_KINDS = (
    "coin",
    "button",
    "snap",
    "wire",
    "ecg_electrode",
    "clip",
    "necklace",
    "pacemaker",
)

RECTANGLE, ELLIPSE, POLYGON = 0, 1, 2

_ANATOMY_CANVAS = 384


@dataclass(frozen=True)
class Annotation:
    """One Object-CXR annotation: a shape type and its flat pixel coordinates."""

    shape_type: int
    points: tuple[int, ...]

    def to_objectcxr(self) -> str:
        return " ".join(str(value) for value in (self.shape_type, *self.points))


@dataclass(frozen=True)
class PlantedObject:
    kind: str
    annotation: Annotation
    area_pixels: int


@dataclass
class Phantom:
    """A rendered radiograph in the display domain, values in [0, 1]."""

    image: np.ndarray  # float32 (H, W)
    mask: np.ndarray  # uint8 (H, W), 1 where an object lies
    objects: list[PlantedObject] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


def _anatomy(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth chest anatomy (body, lungs, mediastinum, spine, ribs, clavicles)."""
    scale = _ANATOMY_CANVAS / max(height, width)
    ch, cw = max(64, round(height * scale)), max(64, round(width * scale))
    canvas = np.full((ch, cw), 0.04, np.float32)

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(x * cw)), int(round(y * ch))

    def axes(ax: float, ay: float) -> tuple[int, int]:
        return max(1, int(round(ax * cw))), max(1, int(round(ay * ch)))

    jitter = lambda s: float(rng.uniform(-s, s))  # noqa: E731
    centre_x = 0.5 + jitter(0.03)
    tissue = 0.42 + jitter(0.06)
    cv2.ellipse(canvas, pt(centre_x, 0.62), axes(0.47 + jitter(0.02), 0.62), 0, 0, 360, tissue, -1)
    # neck and shoulders
    cv2.rectangle(canvas, pt(centre_x - 0.09, 0.0), pt(centre_x + 0.09, 0.15), tissue, -1)
    cv2.ellipse(canvas, pt(centre_x, 0.18), axes(0.46, 0.1), 0, 180, 360, tissue, -1)

    lung = tissue - 0.24 + jitter(0.04)
    lung_layer = np.zeros_like(canvas)
    for side in (-1, 1):
        lx = centre_x + side * (0.19 + jitter(0.015))
        cv2.ellipse(lung_layer, pt(lx, 0.5), axes(0.15 + jitter(0.01), 0.3 + jitter(0.02)),
                    side * 4, 0, 360, 1.0, -1)
    # vessel texture inside the lungs
    texture = cv2.GaussianBlur(rng.normal(0, 1, canvas.shape).astype(np.float32), (0, 0), 2.0)
    canvas = np.where(lung_layer > 0, lung + 0.04 * texture, canvas)

    # ribs: posterior arcs across each hemithorax
    ribs = np.zeros_like(canvas)
    thickness = max(1, int(round(0.012 * ch)))
    for index in range(9):
        y = 0.24 + index * 0.065 + jitter(0.006)
        for side in (-1, 1):
            cv2.ellipse(ribs, pt(centre_x + side * 0.17, y), axes(0.2, 0.07), 0,
                        200 if side < 0 else -20, 340 if side < 0 else 160, 1.0, thickness)
    canvas += 0.1 * ribs * (lung_layer > 0)
    for side in (-1, 1):  # clavicles
        cv2.line(canvas, pt(centre_x + side * 0.05, 0.2), pt(centre_x + side * 0.33, 0.16),
                 tissue + 0.16, max(1, int(0.02 * ch)))
    # mediastinum and heart (heart bulges to the image right, the patient's left on a PA view)
    cv2.rectangle(canvas, pt(centre_x - 0.06, 0.15), pt(centre_x + 0.06, 0.6), tissue + 0.1, -1)
    cv2.ellipse(canvas, pt(centre_x + 0.06, 0.63), axes(0.15 + jitter(0.02), 0.12), -20, 0, 360,
                tissue + 0.14, -1)
    cv2.rectangle(canvas, pt(centre_x - 0.025, 0.0), pt(centre_x + 0.025, 1.0), tissue + 0.2, -1)
    # diaphragm domes and abdomen
    for side in (-1, 1):
        cv2.ellipse(canvas, pt(centre_x + side * 0.19, 0.86), axes(0.18, 0.08), 0, 180, 360,
                    tissue + 0.05, -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 1.5)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR)


def _disk(mask: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    cv2.circle(mask, centre, radius, 1, -1, lineType=cv2.LINE_8)


def _ellipse_box(centre: tuple[int, int], radius: int) -> Annotation:
    x, y = centre
    return Annotation(ELLIPSE, (x - radius, y - radius, x + radius, y + radius))


def _smooth_curve(rng: np.random.Generator, start: np.ndarray, length: float,
                  segments: int = 12) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    points = [start.astype(np.float64)]
    step = length / segments
    for _ in range(segments):
        angle += rng.normal(0, 0.35)
        points.append(points[-1] + step * np.array([math.cos(angle), math.sin(angle)]))
    return np.round(np.array(points)).astype(np.int32)


def _thin_polygon(curve: np.ndarray, half_width: int) -> Annotation:
    """A closed polygon hugging a polyline, as an annotator outlines a wire."""
    direction = np.gradient(curve.astype(np.float64), axis=0)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    offset = (half_width + 1) * normal
    outline = np.concatenate([curve + offset, (curve - offset)[::-1]])
    return Annotation(POLYGON, tuple(int(v) for v in np.round(outline).ravel()))


def _draw_coin(rng, mask, centre, unit):
    radius = max(3, int(unit * rng.uniform(1.4, 2.4)))
    _disk(mask, centre, radius)
    return _ellipse_box(centre, radius)


def _draw_button(rng, mask, centre, unit):
    radius = max(3, int(unit * rng.uniform(0.9, 1.5)))
    _disk(mask, centre, radius)
    hole = max(1, radius // 5)
    for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1))[: int(rng.integers(2, 5))]:
        cv2.circle(mask, (centre[0] + dx * radius // 3, centre[1] + dy * radius // 3), hole, 0, -1)
    return _ellipse_box(centre, radius)


def _draw_snap(rng, mask, centre, unit):
    radius = max(3, int(unit * rng.uniform(0.8, 1.3)))
    cv2.circle(mask, centre, radius, 1, max(1, radius // 3))
    return _ellipse_box(centre, radius + max(1, radius // 3) // 2)


def _draw_wire(rng, mask, centre, unit):
    curve = _smooth_curve(rng, np.array(centre), unit * rng.uniform(8, 16))
    half_width = max(1, int(unit * 0.25))
    cv2.polylines(mask, [curve], False, 1, 2 * half_width)
    return _thin_polygon(curve, half_width)


def _draw_ecg_electrode(rng, mask, centre, unit):
    radius = max(3, int(unit * rng.uniform(0.9, 1.3)))
    _disk(mask, centre, radius)
    lead = _smooth_curve(rng, np.array(centre), unit * rng.uniform(3, 6), segments=6)
    cv2.polylines(mask, [lead], False, 1, max(1, int(unit * 0.3)))
    x, y = centre
    pad = np.array([[x - radius, y - radius], [x + radius, y - radius],
                    [x + radius, y + radius], [x - radius, y + radius]])
    points = np.concatenate([lead, pad])
    hull = cv2.convexHull(points.astype(np.int32)).reshape(-1, 2)
    return Annotation(POLYGON, tuple(int(v) for v in hull.ravel()))


def _draw_clip(rng, mask, centre, unit):
    half_w, half_h = max(2, int(unit * rng.uniform(0.3, 0.6))), max(3, int(unit * rng.uniform(0.9, 1.6)))
    x, y = centre
    cv2.rectangle(mask, (x - half_w, y - half_h), (x + half_w, y + half_h), 1, -1)
    return Annotation(RECTANGLE, (x - half_w, y - half_h, x + half_w, y + half_h))


def _draw_necklace(rng, mask, centre, unit):
    height, width = mask.shape
    neck = (int(width * rng.uniform(0.46, 0.54)), int(height * rng.uniform(0.04, 0.1)))
    span_x, span_y = unit * rng.uniform(5, 8), unit * rng.uniform(4, 8)
    bead = max(1, int(unit * 0.25))
    angles = np.linspace(0.15 * math.pi, 0.85 * math.pi, int(rng.integers(14, 26)))
    beads = [(int(neck[0] + span_x * math.cos(a)), int(neck[1] + span_y * math.sin(a))) for a in angles]
    for position in beads:
        _disk(mask, position, bead)
    cv2.polylines(mask, [np.array(beads, np.int32)], False, 1, max(1, bead // 2))
    return _thin_polygon(np.array(beads, np.int32), bead)


def _draw_pacemaker(rng, mask, centre, unit):
    height, width = mask.shape
    x = int(width * rng.choice([rng.uniform(0.2, 0.32), rng.uniform(0.68, 0.8)]))
    y = int(height * rng.uniform(0.18, 0.3))
    half_w, half_h = int(unit * rng.uniform(2.0, 2.8)), int(unit * rng.uniform(1.5, 2.0))
    cv2.rectangle(mask, (x - half_w, y - half_h), (x + half_w, y + half_h), 1, -1)
    heart = np.array([int(width * 0.55), int(height * 0.62)])
    lead = np.linspace(np.array([x, y + half_h]), heart, 10)
    lead[:, 0] += np.sin(np.linspace(0, math.pi, 10)) * unit * 3
    cv2.polylines(mask, [np.round(lead).astype(np.int32)], False, 1, max(1, int(unit * 0.3)))
    outline = np.concatenate([np.array([[x - half_w, y - half_h], [x + half_w, y - half_h],
                                        [x + half_w, y + half_h], [x - half_w, y + half_h]]),
                              np.round(lead).astype(np.int32)])
    hull = cv2.convexHull(outline.astype(np.int32)).reshape(-1, 2)
    return Annotation(POLYGON, tuple(int(v) for v in hull.ravel()))


_DRAWERS: dict[str, Callable[..., Annotation]] = {
    "coin": _draw_coin,
    "button": _draw_button,
    "snap": _draw_snap,
    "wire": _draw_wire,
    "ecg_electrode": _draw_ecg_electrode,
    "clip": _draw_clip,
    "necklace": _draw_necklace,
    "pacemaker": _draw_pacemaker,
}


def render_phantom(
    rng: np.random.Generator,
    height: int,
    width: int,
    object_kinds: list[str] | None = None,
) -> Phantom:
    """Render one radiograph with the given objects (random ones when None).

    Exposure (brightness, contrast, gamma) and noise vary with ``rng``; object
    size is relative to the image so that a phantom looks alike at any size.
    """
    if height < 64 or width < 64:
        raise ValueError(f'Argument "height"/"width" must be at least 64, got {height}x{width}')
    if object_kinds is None:
        count = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
        object_kinds = [str(k) for k in rng.choice(OBJECT_KINDS, size=count)]
    unknown = set(object_kinds) - set(OBJECT_KINDS)
    if unknown:
        raise ValueError(f'Argument "object_kinds" has unknown kinds {sorted(unknown)}; '
                         f"allowed: {OBJECT_KINDS}")

    image = _anatomy(rng, height, width)
    unit = 0.012 * min(height, width)
    mask = np.zeros((height, width), np.uint8)
    objects = []
    for kind in object_kinds:
        own = np.zeros_like(mask)
        # over the thorax (lung fields and mediastinum), where scoring counts foreign bodies
        centre = (int(width * rng.uniform(0.22, 0.78)), int(height * rng.uniform(0.22, 0.76)))
        annotation = _DRAWERS[kind](rng, own, centre, unit)
        objects.append(PlantedObject(kind, annotation, int(own.sum())))
        metal = rng.uniform(0.88, 1.0)
        image = np.where(own > 0, np.maximum(image, metal), image)
        mask |= own

    gain, gamma = rng.uniform(0.85, 1.1), rng.uniform(0.8, 1.25)
    image = np.clip(image * gain, 0, 1) ** gamma
    noise_sigma = rng.uniform(0.005, 0.02)
    image = image + rng.normal(0, noise_sigma, image.shape).astype(np.float32)
    return Phantom(np.clip(image, 0, 1).astype(np.float32), mask, objects)
