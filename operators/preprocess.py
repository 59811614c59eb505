"""Graph node 2: bring display pixels to the network's input grid (256 x 256, 3 channels).

The aspect ratio is not kept, as in the method's training: every radiograph
is squeezed to the same square grid, and results on that grid are resized back
to the source's rows x columns when DICOM objects are written.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from monai.deploy.core import Fragment

from .case import Case, CaseOperator


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 256
    channels: int = 3


def resize_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging when shrinking (keeps thin wires), bilinear when enlarging."""
    shrinking = height * width < pixels.shape[0] * pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels.astype(np.float32), (width, height), interpolation=interpolation)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A binary mask on another grid: a target pixel is set when at least half of it is covered."""
    return (resize_image(mask.astype(np.float32), height, width) >= 0.5).astype(np.uint8)


def to_network_input(pixels: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """(channels, size, size) float32 in [0, 1] from a 2-D display image in [0, 1]."""
    if pixels.ndim != 2:
        raise ValueError(f'Argument "pixels" must be 2-D, got shape {pixels.shape}')
    square = np.clip(resize_image(pixels, config.size, config.size), 0.0, 1.0)
    return np.repeat(square[None], config.channels, axis=0)


class PreprocessOperator(CaseOperator):
    """Sets ``case.network_input`` from ``case.source.pixels``."""

    stage = "preprocess"

    def __init__(self, fragment: Fragment, *args, config: PreprocessConfig = PreprocessConfig(),
                 **kwargs) -> None:
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        case.network_input = to_network_input(case.source.pixels, self.config)
