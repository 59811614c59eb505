"""Lung fields by a small learned segmentation network, for the acquisition checks.

The classical finder of :mod:`.chest_region` looks for two dark fields; on an opaque ICU plate,
a white-out hemithorax or a plate where the chest fills the film it finds one field, or fields
that stop short of the lung's real edge, and the checks that measure lung edges (cut-off,
inspiration, collimation) then cannot tell or misjudge.  This network was trained on lung
outlines drawn by people (the CC BY 4.0 masks of v7labs/covid-19-xray-dataset on the Hannover
plates, ``xiqa.training.lung_fields``); like those masks, its lung field includes the lung behind
the heart and the posterior recess below the dome where it shows.

It runs on the analysis grid brought down to ``input_size`` (a lung edge needs no finer grid),
on the CPU in a few milliseconds; its probability is brought back to the grid and split into the
lung field on the image's left and the one on its right.  The weights (``lung_fields.pt``, about
a megabyte) ship in the package with their lineage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.networks.nets import UNet

MODEL_FILE = "lung_fields.pt"
FORMAT = "xiqa-lung-fields-1"
#: grey-level spread (display domain) below which a grid shows no anatomy
MIN_CONTRAST = 0.02


def lung_network(channels: tuple[int, ...]) -> torch.nn.Module:
    """The network's architecture: a 2-D U-Net, one grey channel in, one lung logit out."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=1)


@dataclass
class LungFieldModel:
    """A trained lung-field network and what it was made from."""

    network: torch.nn.Module
    input_size: int
    channels: tuple[int, ...]
    lineage: dict = field(default_factory=dict)
    threshold: float = 0.5

    def probability(self, grid: np.ndarray) -> np.ndarray:
        """Lung probability on ``grid`` (2-D, display domain, values in [0, 1]), same shape."""
        small = cv2.resize(grid.astype(np.float32), (self.input_size, self.input_size),
                           interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(standardised(small))[None, None])
        probability = torch.sigmoid(logits)[0, 0].numpy()
        return cv2.resize(probability, (grid.shape[1], grid.shape[0]), interpolation=cv2.INTER_LINEAR)

    def lung_labels(self, grid: np.ndarray) -> np.ndarray:
        """uint8 labels on ``grid``: 1 the lung field on the image's left, 2 on its right, 0 elsewhere.

        A nearly uniform grid shows no anatomy and gets no lung fields: standardised, it is all
        noise, in which a network finds whatever shape it learnt."""
        if float(grid.std()) < MIN_CONTRAST:
            return np.zeros(grid.shape, np.uint8)
        return split_lung_fields(self.probability(grid) >= self.threshold)

    def save(self, path: Path) -> Path:
        torch.save({"format": FORMAT, "input_size": self.input_size, "channels": list(self.channels),
                    "threshold": self.threshold, "lineage": self.lineage,
                    "state_dict": self.network.state_dict()}, path)
        return Path(path)


def standardised(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: plates from other chains differ in brightness and contrast."""
    return ((image - image.mean()) / max(float(image.std()), 1e-3)).astype(np.float32)


def split_lung_fields(mask: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """The largest component on each half of the image, labelled 1 (image left) and 2 (image right).

    One component spanning the midline (lungs joined under a thin mediastinum) is cut at the
    column of least lung between the quarters; components under ``min_fraction`` of the image
    are noise."""
    count, components, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                                           connectivity=8)
    labels = np.zeros(mask.shape, np.uint8)
    width = mask.shape[1]
    kept = [index for index in range(1, count) if stats[index, cv2.CC_STAT_AREA] >= min_fraction * mask.size]
    if len(kept) == 1:
        (index,) = kept
        left = stats[index, cv2.CC_STAT_LEFT]
        if left < width / 2 < left + stats[index, cv2.CC_STAT_WIDTH]:
            component = components == index
            cut = width // 4 + int(np.argmin(component.sum(axis=0)[width // 4: 3 * width // 4]))
            labels[:, :cut][component[:, :cut]] = 1
            labels[:, cut:][component[:, cut:]] = 2
            return labels
    for value, on_side in ((1, lambda x: x < width / 2), (2, lambda x: x >= width / 2)):
        candidates = [index for index in kept if on_side(centroids[index][0])]
        if candidates:
            largest = max(candidates, key=lambda index: stats[index, cv2.CC_STAT_AREA])
            labels[components == largest] = value
    return labels


def load_lung_model(path: Path | None = None) -> LungFieldModel:
    """The lung-field model at ``path``, by default the one shipped in the package.

    Raises
    ------
    ValueError
        The file is not a lung-field model of this format.
    """
    if path is None:
        return _shipped_model()
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise ValueError(f"{Path(path).name}: not a lung-field model ({FORMAT})")
    channels = tuple(int(c) for c in stored["channels"])
    network = lung_network(channels)
    network.load_state_dict(stored["state_dict"])
    network.eval()
    return LungFieldModel(network, int(stored["input_size"]), channels, dict(stored["lineage"]),
                          float(stored["threshold"]))


@lru_cache(maxsize=1)
def _shipped_model() -> LungFieldModel:
    with resources.as_file(resources.files("xiqa.operators") / MODEL_FILE) as shipped:
        return load_lung_model(shipped)
