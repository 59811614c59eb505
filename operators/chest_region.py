"""Where the patient's chest is: the lung fields and the mediastinum between them.

A classical method on the analysis grid (display domain, brighter = denser), made for real
frontal radiographs and used twice: the input gate asks whether two lung fields are there at
all, and scoring counts only objects that lie over the chest, so burnt-in markers, text,
collimation and the image border never count.

1. Blur, then normalise by the 2nd and 98th percentiles of the central part of the image.
2. Lung candidates are the dark components below an Otsu threshold of that central part, after
   removing the air around the body (the darkest pixels reached from the image frame), cutting
   thin seams by an erosion, and dropping what still touches the image border over a long stretch.
3. The largest candidate on each side of the midline is a lung field; one candidate that spans
   the midline (lungs joined over a dark mediastinum) is split there.
4. The chest region is the convex hull of both lung fields and of their mirror images about the
   axis between them (it spans the mediastinum and the heart), grown by a margin for the lung
   edges and the costophrenic angles.  The mirror images stand in for lung that is not dark: a
   consolidated, nodular or effused part of one lung (or one hidden under a device) would
   otherwise fall outside a skewed hull, and objects over it would not count.

Where the lung fields cannot be found on a plate that is a frontal chest (an ICU plate, a white-out
hemithorax, black borders), :func:`estimate_chest_region` stands in: the body outline (what is
neither outside air nor a collimator shutter) shrunk by the margin, or a central template where no
outline can be told from the background.  Such a region says that it is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

#: grid pixels: a dark seam narrower than this does not carry the outside air into a lung
AIR_SEAM = 7


@dataclass(frozen=True)
class ChestRegionConfig:
    blur_sigma: float = 2.0  # analysis-grid pixels
    central_fraction: float = 0.7  # the part of the image whose statistics set the threshold
    min_lung_fraction: float = 0.02  # of the image, per lung field
    max_lung_fraction: float = 0.35
    max_border_contact: float = 0.08  # a candidate may touch the border along this share of its outline
    margin_fraction: float = 0.05  # of the image side, added around the hull
    min_mediastinum_fraction: float = 0.03  # gap between the lung fields, of the image width
    min_mediastinum_contrast: float = 0.08  # mediastinum brighter than the lungs, normalised units
    # lungs joined over the mediastinum (split at the midline, so no gap) need a clearer mediastinum
    joined_mediastinum_contrast: float = 0.2


@dataclass(frozen=True)
class LungField:
    area_fraction: float
    centroid_y: float  # fractions of the grid
    centroid_x: float
    mean_level: float  # normalised brightness
    x_range: tuple[float, float]


@dataclass(frozen=True)
class ChestRegion:
    """The chest mask on the analysis grid and the evidence it came from."""

    mask: np.ndarray  # bool (H, W); all False when no chest was found
    lungs: tuple[LungField, ...]
    mediastinum_gap: float  # fraction of the width between the lung fields (0 when not two)
    mediastinum_contrast: float  # normalised brightness of the gap above the lungs
    problem: str | None  # why this is not two lung fields, or None
    # where the lungs were not found and the region stands in for them: "body outline" or "template"
    estimated_from: str | None = None
    # uint8 (H, W): 1 where the lung field on the image's left lies, 2 on its right, 0 elsewhere;
    # None where no lung field was found (the acquisition checks measure on it)
    lung_labels: np.ndarray | None = None

    @property
    def estimated(self) -> bool:
        return self.estimated_from is not None

    @property
    def found(self) -> bool:
        return self.problem is None

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())

    def to_dict(self) -> dict:
        return {
            "found": self.found,
            "problem": self.problem,
            "estimated": self.estimated,
            "estimated_from": self.estimated_from,
            "area_fraction": round(self.area_fraction, 4),
            "mediastinum_gap": round(self.mediastinum_gap, 4),
            "mediastinum_contrast": round(self.mediastinum_contrast, 4),
            "lungs": [
                {
                    "area_fraction": round(lung.area_fraction, 4),
                    "centroid": [round(lung.centroid_y, 4), round(lung.centroid_x, 4)],
                }
                for lung in self.lungs
            ],
        }


def normalised_image(image: np.ndarray, config: ChestRegionConfig) -> tuple[np.ndarray, np.ndarray]:
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), config.blur_sigma)
    height, width = image.shape
    margin_y = int(height * (1 - config.central_fraction) / 2)
    margin_x = int(width * (1 - config.central_fraction) / 2)
    central = blurred[margin_y : height - margin_y, margin_x : width - margin_x]
    low, high = np.percentile(central, (2, 98))
    normalised = np.clip((blurred - low) / max(high - low, 1e-6), 0, 1)
    return normalised, normalised[margin_y : height - margin_y, margin_x : width - margin_x]


def _otsu(values: np.ndarray) -> float:
    as_bytes = np.round(values * 255).astype(np.uint8).reshape(-1, 1)
    threshold, _ = cv2.threshold(as_bytes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(threshold) / 255


def _border_contact(component: np.ndarray) -> float:
    """Share of the image border that the component covers, relative to its own outline."""
    border = np.concatenate([component[0], component[-1], component[:, 0], component[:, -1]])
    outline = cv2.countNonZero(
        cv2.morphologyEx(component.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    )
    return float(border.sum()) / max(outline, 1)


def _lung_field(component: np.ndarray, normalised: np.ndarray) -> LungField:
    ys, xs = np.nonzero(component)
    height, width = component.shape
    return LungField(
        area_fraction=ys.size / component.size,
        centroid_y=float(ys.mean()) / height,
        centroid_x=float(xs.mean()) / width,
        mean_level=float(normalised[component].mean()),
        x_range=(float(xs.min()) / width, float(xs.max() + 1) / width),
    )


def _outside_air(normalised: np.ndarray, threshold: float) -> np.ndarray:
    """Air around the body and un-exposed borders: the darkest pixels, reached from the image frame.

    Air is darker than aerated lung, so a flood from the frame through pixels well below the lung
    threshold stops at the skin line even where the lung field touches it.  The flood starts from
    an opening of those pixels, so it cannot pass through a thin dark seam (over the shoulder, past
    a burnt-in label) into a lung whose darkest parts are as dark as air.
    """
    very_dark = (normalised < threshold * 0.55).astype(np.uint8)
    opened = cv2.morphologyEx(very_dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                                    (AIR_SEAM, AIR_SEAM)))
    air = _reached_from_frame(opened)
    return cv2.dilate(air.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def _shutters(image: np.ndarray) -> np.ndarray:
    """Collimator shutters: flat, nearly white areas reached from the image frame (un-exposed plate)."""
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 3)
    texture = np.sqrt(np.maximum(cv2.GaussianBlur(image.astype(np.float32) ** 2, (0, 0), 3) - blurred**2, 0))
    flat_bright = ((blurred > 0.85) & (texture < 0.02)).astype(np.uint8)
    return _reached_from_frame(flat_bright)


def _reached_from_frame(mask: np.ndarray) -> np.ndarray:
    frame = np.zeros(mask.shape, bool)
    frame[[0, -1], :] = True
    frame[:, [0, -1]] = True
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    touching = np.unique(labels[frame & (mask > 0)])
    return np.isin(labels, touching[touching > 0])


def exposed_field(image: np.ndarray) -> np.ndarray:
    """What the X-ray beam reached on the analysis grid: the plate less its collimator shutters.

    The shutters found by :func:`_shutters` stop short of their edge by the blur of the texture
    measure; they are grown back over the bright pixels next to them.
    """
    shutters = _shutters(image).astype(np.uint8)
    grown = cv2.dilate(shutters, np.ones((3, 3), np.uint8), iterations=12) & (image > 0.85)
    return ~((shutters > 0) | (grown > 0))


def body_outline(image: np.ndarray, config: ChestRegionConfig = ChestRegionConfig()) -> np.ndarray:
    """The imaged body on the analysis grid: neither the air around it nor a collimator shutter."""
    normalised, central = normalised_image(image, config)
    return ~_outside_air(normalised, _otsu(central)) & ~_shutters(image)


def estimate_chest_region(image: np.ndarray, found: ChestRegion, body: np.ndarray,
                          config: ChestRegionConfig = ChestRegionConfig()) -> ChestRegion:
    """A stand-in chest region for a frontal chest whose lung fields ``found`` could not show;
    ``body`` is the image's :func:`body_outline`.

    The convex hull of the body outline's largest part and of its mirror image about the plate's
    centre line, shrunk by the margin (the outline runs along the skin; objects at the skin line,
    markers and text outside it still do not count).  The mirror image keeps a white-out
    hemithorax inside, which can be as flat and bright as a collimator shutter.  A
    plate where the body fills the frame or cannot be told from the background gets a central
    template instead, which leaves out the border strip where markers and text sit.
    """
    height, width = image.shape
    margin = max(1, int(round(config.margin_fraction * max(height, width))))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(body.astype(np.uint8), connectivity=8)
    region = np.zeros((height, width), np.uint8)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        part = labels == largest
        hull = cv2.convexHull(cv2.findNonZero((part | _mirrored(part, width / 2)).astype(np.uint8)))
        cv2.fillConvexPoly(region, hull, 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        region = cv2.erode(region, kernel)
    # a hull over (nearly) the whole frame says nothing about where the body is
    if not 0.2 <= region.mean() <= 0.9:
        region[:] = 0
        region[margin : height - margin, 2 * margin : width - 2 * margin] = 1
        return replace(found, mask=region > 0, estimated_from="template")
    return replace(found, mask=region > 0, estimated_from="body outline")


def _candidates(dark: np.ndarray, config: ChestRegionConfig) -> list[np.ndarray]:
    """Lung-sized dark components: seeds of an erosion (which cuts thin seams into the axillae and
    the neck) grown back inside the dark mask."""
    erode = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    seeds = cv2.erode(dark.astype(np.uint8), erode)
    count, labels = cv2.connectedComponents(seeds, connectivity=8)
    kept = []
    for label in range(1, count):
        seed = (labels == label).astype(np.uint8)
        component = (cv2.dilate(seed, erode) > 0) & dark
        if component.mean() < config.min_lung_fraction / 2:
            continue
        if _border_contact(component) > config.max_border_contact:
            continue
        kept.append(component)
    return kept


def _mirrored(mask: np.ndarray, axis: float) -> np.ndarray:
    """``mask`` reflected about the vertical line at column ``axis`` (pixel edges), clipped."""
    width = mask.shape[1]
    source = np.floor(2 * axis - np.arange(width) - 1 + 0.5).astype(int)
    inside = (source >= 0) & (source < width)
    mirrored = np.zeros_like(mask)
    mirrored[:, inside] = mask[:, source[inside]]
    return mirrored


def find_chest_region(image: np.ndarray, config: ChestRegionConfig = ChestRegionConfig()) -> ChestRegion:
    """The chest region of a frontal radiograph on its analysis grid (2-D, values in [0, 1])."""
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be 2-D, got shape {image.shape}')
    height, width = image.shape
    empty = np.zeros((height, width), bool)
    normalised, central = normalised_image(image, config)
    if float(central.std()) < 0.05:
        return ChestRegion(empty, (), 0.0, 0.0, "no anatomy: the image is nearly uniform")
    threshold = _otsu(central)
    dark = (normalised < threshold) & ~_outside_air(normalised, threshold)
    sides: dict[str, np.ndarray] = {}
    middle = width // 2
    for component in sorted(_candidates(dark, config), key=lambda c: -int(c.sum())):
        xs = np.nonzero(component.any(axis=0))[0]
        spans_midline = xs.min() < middle - width * 0.05 and xs.max() > middle + width * 0.05
        halves = {"left": component.copy(), "right": component.copy()}
        halves["left"][:, middle:] = False
        halves["right"][:, :middle] = False
        if not spans_midline:
            side = "left" if xs.mean() < middle else "right"
            halves = {side: component}
        for side, part in halves.items():
            if side not in sides and part.mean() >= config.min_lung_fraction:
                sides[side] = part
    lungs = tuple(_lung_field(sides[side], normalised) for side in ("left", "right") if side in sides)
    labels = np.zeros((height, width), np.uint8)
    for value, side in ((1, "left"), (2, "right")):
        if side in sides:
            labels[sides[side]] = value
    labels = labels if lungs else None
    if len(lungs) < 2:
        return ChestRegion(
            empty, lungs, 0.0, 0.0, f"found {len(lungs)} lung field(s), a frontal chest shows 2",
            lung_labels=labels,
        )
    left, right = lungs
    gap = max(0.0, right.x_range[0] - left.x_range[1])
    band = normalised[
        int(min(left.centroid_y, right.centroid_y) * height) : int(
            max(left.centroid_y, right.centroid_y) * height
        )
        + 1,
        int(left.x_range[1] * width) : max(int(right.x_range[0] * width), int(left.x_range[1] * width) + 1),
    ]
    contrast = float(band.mean()) - (left.mean_level + right.mean_level) / 2 if band.size else 0.0
    problem = None
    for lung in lungs:
        if lung.area_fraction > config.max_lung_fraction:
            problem = (
                f"a lung field covers {lung.area_fraction:.0%} of the image (at most "
                f"{config.max_lung_fraction:.0%} on a frontal chest)"
            )
    if abs(left.centroid_y - right.centroid_y) > 0.2:
        problem = "the two dark fields are not side by side"
    elif contrast < config.min_mediastinum_contrast or (
        gap < config.min_mediastinum_fraction and contrast < config.joined_mediastinum_contrast
    ):
        problem = f"no mediastinum between the dark fields (gap {gap:.0%}, contrast {contrast:.2f})"
    if problem is not None:
        return ChestRegion(empty, lungs, gap, contrast, problem, lung_labels=labels)
    fields = sides["left"] | sides["right"]
    # the body's axis: halfway between the outer edges of the two lung fields
    axis = (left.x_range[0] + right.x_range[1]) / 2 * width
    both = (fields | _mirrored(fields, axis)).astype(np.uint8)
    points = cv2.findNonZero(both)
    hull = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    margin = max(1, int(round(config.margin_fraction * max(height, width))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    return ChestRegion(cv2.dilate(hull, kernel) > 0, lungs, gap, contrast, None, lung_labels=labels)
