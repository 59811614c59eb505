"""Synthetic frontal chests on the analysis grid whose geometry the acquisition tests control."""

from __future__ import annotations

import cv2
import numpy as np

GRID = 256


def chest(*, shift_y: int = 0, mediastinum_shift: int = 0, lung_height: int = 78, lung_width: int = 44,
          shutter: int = 0, clip_lungs: float = 0.0, seed: int = 0) -> np.ndarray:
    """A frontal chest (display domain, bright = dense): body, two dark lung fields, a brighter
    mediastinum and spine between them, soft-tissue texture.

    ``shift_y`` moves the whole thorax down (positive) or up; ``mediastinum_shift`` moves the
    mediastinum (and the medial lung edges with it) towards the image's right, as rotation does;
    ``lung_height`` and ``lung_width`` are the lung ellipses' half axes in grid pixels;
    ``shutter`` a flat white collimator band of that width around the frame; ``clip_lungs`` the
    share of each lung field (its lower part) set to black.
    """
    rng = np.random.default_rng(seed)
    image = np.full((GRID, GRID), 0.08, np.float32)  # air outside the body
    centre_y = 128 + shift_y
    cv2.ellipse(image, (128, centre_y + 10), (110, 150), 0, 0, 360, 0.62, -1)  # the body
    lungs = np.zeros((GRID, GRID), np.uint8)
    for centre_x in (128 - 52, 128 + 52):
        cv2.ellipse(lungs, (centre_x, centre_y), (lung_width, lung_height), 0, 0, 360, 1, -1)
    # the mediastinum and spine between the lungs; rotation moves it against the chest walls
    cv2.rectangle(lungs, (128 - 14 + mediastinum_shift, 0), (128 + 14 + mediastinum_shift, GRID), 0, -1)
    # aerated lung is darkest in its middle; apex and base lie under more tissue
    distance = np.abs(np.arange(GRID, dtype=np.float32) - centre_y)[:, None] / lung_height
    lung_level = 0.22 + 0.14 * np.minimum(distance, 1.0) ** 2
    image = np.where(lungs > 0, np.broadcast_to(lung_level, image.shape), image).astype(np.float32)
    if clip_lungs:
        rows = np.nonzero(lungs.any(axis=1))[0]
        cut = int(rows[-1] - clip_lungs * (rows[-1] - rows[0]))
        clipped = (lungs > 0) & (np.arange(GRID)[:, None] >= cut)
        image[clipped] = 0.0
    image += rng.normal(0, 0.015, image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    if clip_lungs:
        image[clipped] = 0.0
    if shutter:
        image[:shutter], image[-shutter:], image[:, :shutter], image[:, -shutter:] = 0.97, 0.97, 0.97, 0.97
    return np.clip(image, 0, 1)
