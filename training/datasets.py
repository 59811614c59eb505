"""Training samples rendered from the synthetic phantoms of ``dicom_fixtures``.

Each sample index maps to its own random stream, so sample ``i`` of seed ``s``
is the same image whatever else is drawn, and two seeds never share images.
"""

from __future__ import annotations

import numpy as np
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.operators.preprocess import PreprocessConfig, resize_mask, to_network_input


def render_phantom_sample(seed: int, index: int, size_range: tuple[int, int] = (384, 768),
                          config: PreprocessConfig = PreprocessConfig()) -> dict[str, np.ndarray]:
    """One {"image": (C, S, S), "label": (1, S, S)} sample on the network grid."""
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    phantom = render_phantom(rng, height, width)
    return {
        "image": to_network_input(phantom.image, config),
        "label": resize_mask(phantom.mask, config.size, config.size)[None].astype(np.float32),
    }


def render_phantom_samples(seed: int, count: int, **kwargs) -> list[dict[str, np.ndarray]]:
    return [render_phantom_sample(seed, index, **kwargs) for index in range(count)]
