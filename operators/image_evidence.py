"""What the pixels say against a frontal chest when the lung fields cannot be found.

The lung finder (``chest_region``) fails on many real frontal chests: ICU supine plates, a
white-out hemithorax, black borders, breast shadows.  Its failure is therefore weak evidence, and
the gate refuses a plate whose tags say "chest, PA/AP" only on strong evidence of something else,
the checks here:

- no radiograph at all: a nearly uniform image, drawn graphics (a test pattern, a screenshot: most
  pixels in a few grey levels), pixel noise (neighbours uncorrelated), a smooth ramp without the
  fine detail every exposure has;
- a limb: the imaged body, without the air around it and the collimator shutters, is much
  narrower than the plate is high (a tibia, a forearm, a hand); a chest is about as wide as high.

The thresholds leave a margin past the least typical of 1,139 real frontal chests from three
sources (NIH ChestX-ray14, Hannover, chestx-ray.com normals; ``benchmarks/gate.py``): at most 69 %
of the pixels in 16 grey levels (black borders), neighbour correlation at least 0.92, detail at
least 0.016, body width at least 0.39 of the height.  The NEMA WG04 ankle's body is 0.29 of its
height; pydicom's SMPTE test patterns have 94 % of their pixels in 16 levels, screenshots 85 %,
noise a correlation of 0, ramps a detail of 0.002.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .chest_region import ChestRegionConfig, normalised_image


@dataclass(frozen=True)
class ImageEvidenceConfig:
    min_contrast: float = 0.05  # grey-level spread of the central part; below it, nothing is imaged
    max_few_levels_share: float = 0.8  # of the pixels in the 16 most common grey levels (graphics)
    min_neighbour_correlation: float = 0.5  # of horizontally adjacent pixels; noise has about 0
    min_detail: float = 0.008  # spread of the image minus its blur (sigma 4 grid pixels)
    min_body_width: float = 0.35  # of the plate's height, median over the middle rows


def not_a_radiograph(image: np.ndarray, config: ImageEvidenceConfig = ImageEvidenceConfig()) -> str | None:
    """Why ``image`` (analysis grid, [0, 1]) is no exposure of a body, or None."""
    _, central = normalised_image(image, ChestRegionConfig())  # spread by the central percentiles
    if float(central.std()) < config.min_contrast:
        return "no anatomy: the image is nearly uniform"
    levels = np.bincount(np.round(image * 255).astype(np.uint8).ravel(), minlength=256)
    few_levels_share = float(np.sort(levels)[-16:].sum()) / image.size
    if few_levels_share > config.max_few_levels_share:
        return f"drawn graphics, not an exposure ({few_levels_share:.0%} of the pixels in 16 grey levels)"
    centred = image - image.mean()
    correlation = float((centred[:, 1:] * centred[:, :-1]).mean() / max(float(centred.var()), 1e-12))
    if correlation < config.min_neighbour_correlation:
        return f"pixel noise, not an exposure (neighbour correlation {correlation:.2f})"
    detail = float(np.std(image - cv2.GaussianBlur(image.astype(np.float32), (0, 0), 4)))
    if detail < config.min_detail:
        return f"a smooth ramp without anatomical detail (detail {detail:.3f})"
    return None


def strong_evidence_against_chest(
    image: np.ndarray,
    body: np.ndarray,
    aspect: float = 1.0,
    config: ImageEvidenceConfig = ImageEvidenceConfig(),
) -> str | None:
    """Why ``image`` cannot be a frontal chest whatever its tags say, or None.

    ``body`` is its ``chest_region.body_outline`` (the gate estimates the chest region from the
    same outline).  ``aspect`` is the source image's width over its height: the analysis grid is
    square, and a limb is told by its width against the plate's real height.
    """
    problem = not_a_radiograph(image, config)
    if problem is not None:
        return problem
    height = image.shape[0]
    width = float(np.median(body[int(0.2 * height) : int(0.8 * height)].mean(axis=1))) * aspect
    if width < config.min_body_width:
        return (
            f"the imaged body part is {width:.0%} as wide as the plate is high "
            f"(a limb; a chest is at least {config.min_body_width:.0%})"
        )
    return None
