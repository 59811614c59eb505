"""Graph node 3: DeepLabV3+ foreign-object segmentation from MONAI bundles.

A bundle folder holds ``configs/metadata.json`` (MONAI bundle metadata plus an
``xiqa`` block: network spec, metrics, training command) and
``models/model.pt`` (a state dict).  A folder of bundles (one per fold) is an
ensemble: probabilities are averaged before the threshold.

The mask is thresholded with hysteresis: a pixel is foreground above the bundle's
``threshold``, and an 8-connected component of such pixels is kept only when its peak
probability reaches the bundle's ``seed_threshold`` or its area the bundle's ``sure_area``
(all three calibrated on validation images).
On real plates the false objects are pinhead dots and rib crossings whose probability barely
clears the threshold, while metal is near certain somewhere on its extent; the seed removes the
former without thinning the kept objects (which still extend down to ``threshold``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from monai.deploy.core import Fragment
from torch import nn

from .case import Case, CaseOperator

logger = logging.getLogger(__name__)

# package data of xiqa: app_package/bundles in a checkout, xiqa/bundles in an installed wheel
DEFAULT_BUNDLE = Path(str(files("xiqa") / "bundles" / "xiqa_cxr_seg"))


@dataclass(frozen=True)
class NetworkSpec:
    """What ``build_network`` needs; ResNet50 is the method's architecture for real data."""

    architecture: str = "DeepLabV3Plus"
    encoder: str = "resnet50"
    in_channels: int = 3
    classes: int = 1

    @classmethod
    def from_dict(cls, values: dict) -> NetworkSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'Argument "values" has unknown network keys {sorted(unknown)}')
        return cls(**values)


def build_network(spec: NetworkSpec = NetworkSpec()) -> nn.Module:
    """An untrained network (no encoder weights are fetched from any hub)."""
    import segmentation_models_pytorch as smp

    architecture = getattr(smp, spec.architecture, None)
    if architecture is None:
        raise ValueError(f'Argument "architecture" is not a segmentation-models-pytorch model: '
                         f"{spec.architecture!r}")
    return architecture(encoder_name=spec.encoder, encoder_weights=None,
                        in_channels=spec.in_channels, classes=spec.classes)


@dataclass
class SegmentationModel:
    networks: list[nn.Module]
    spec: NetworkSpec
    model_id: str
    device: torch.device
    threshold: float = 0.5
    seed_threshold: float | None = None  # None: every component above ``threshold`` is kept
    sure_area: int | None = None  # grid pixels: a component this large is kept without the seed

    def probability(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean over the ensemble of sigmoid(logits); batch is (N, C, H, W) in [0, 1]."""
        batch = batch.to(self.device)
        with torch.no_grad():
            return torch.stack([torch.sigmoid(net(batch)) for net in self.networks]).mean(dim=0)


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


def bundle_folders(path: Path) -> list[Path]:
    """The bundle at ``path``, or the bundles directly under it (an ensemble of folds)."""
    path = Path(path)
    if (path / "configs" / "metadata.json").is_file():
        return [path]
    folders = sorted(p for p in path.iterdir() if (p / "configs" / "metadata.json").is_file()) \
        if path.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no MONAI bundle (configs/metadata.json) at or under {path}")
    return folders


def default_model(holoscan_model_path: str | None = None) -> Path:
    """The model a run uses when none is named: ``HOLOSCAN_MODEL_PATH`` (the MAP's model folder;
    the argument, else the variable) when it holds a bundle or fold bundles, else the shipped one."""
    path = holoscan_model_path if holoscan_model_path is not None else os.environ.get("HOLOSCAN_MODEL_PATH")
    if path:
        try:
            bundle_folders(Path(path))
            return Path(path)
        except FileNotFoundError:
            logger.warning("no bundle under HOLOSCAN_MODEL_PATH %s; using the shipped model", path)
    return DEFAULT_BUNDLE


def read_metadata(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "configs" / "metadata.json").read_text())


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded in this thread for a while, so that it starts no OpenMP team here.

    The model is loaded in the caller's thread and run in the graph's.  A parallel region during
    the load leaves the caller a thread team of its own, and with two teams on 2 cores the one
    that works runs at about half speed (segmentation 34 -> 65 ms, Grad-CAM 150 -> 235 ms,
    measured here): OpenMP stops letting idle workers spin once it manages more threads than
    there are cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_segmentation_model(path: Path = DEFAULT_BUNDLE, device: str = "auto") -> SegmentationModel:
    """Load one bundle or an ensemble of bundles; all must share one network spec."""
    with one_torch_thread():
        return _load_segmentation_model(path, device)


def _load_segmentation_model(path: Path, device: str) -> SegmentationModel:
    folders = bundle_folders(path)
    target = pick_device(device)
    metadata = [read_metadata(folder) for folder in folders]
    networks, specs, digests = [], set(), []
    for folder, meta in zip(folders, metadata, strict=True):
        spec = NetworkSpec.from_dict(meta["xiqa"]["network"])
        specs.add(spec)
        weights = folder / "models" / "model.pt"
        digests.append(hashlib.sha256(weights.read_bytes()).hexdigest())
        network = build_network(spec)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict({key: value.float() for key, value in state.items()})
        networks.append(network.to(target).eval())
    if len(specs) != 1:
        raise ValueError(f"bundles under {path} disagree on the network: {sorted(map(str, specs))}")
    # a bundle's own threshold (calibrated on its validation images); an ensemble uses their mean
    threshold = float(np.mean([meta["xiqa"].get("threshold", 0.5) for meta in metadata]))
    seeds = [meta["xiqa"].get("seed_threshold") for meta in metadata]
    seed_threshold = float(np.mean(seeds)) if all(seed is not None for seed in seeds) else None
    areas = [meta["xiqa"].get("sure_area") for meta in metadata]
    sure_area = int(np.mean(areas)) if seed_threshold is not None and all(areas) else None
    name = metadata[0].get("name", folders[0].name)
    digest = hashlib.sha256("".join(digests).encode()).hexdigest()[:12]
    model_id = f"{name}@{digest}" + (f"x{len(folders)}" if len(folders) > 1 else "")
    logger.info("segmentation model %s (%d network(s)) on %s", model_id, len(folders), target)
    return SegmentationModel(networks, specs.pop(), model_id, target, threshold, seed_threshold, sure_area)


@dataclass
class SegmentationResult:
    probability: np.ndarray  # float32 (H, W) on the analysis grid
    mask: np.ndarray  # uint8 (H, W)
    model_id: str
    threshold: float = 0.5
    seed_threshold: float | None = None
    sure_area: int | None = None
    components_below_seed: int = 0  # components above ``threshold`` that the seed removed
    _source_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def mask_for_source(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask at the source's rows x columns, computed once (SEG and SC both need it)."""
        if self._source_mask is None or self._source_mask.shape != tuple(shape):
            self._source_mask = mask_at_source(self.probability, shape, self.threshold)
        return self._source_mask


def segment(model: SegmentationModel, network_input: np.ndarray) -> SegmentationResult:
    """Probability map and binary mask for one (C, H, W) input."""
    batch = torch.from_numpy(np.ascontiguousarray(network_input))[None]
    probability = model.probability(batch)[0, 0].cpu().numpy().astype(np.float32)
    mask, removed = hysteresis_mask(probability, model.threshold, model.seed_threshold, model.sure_area)
    return SegmentationResult(probability, mask, model.model_id, model.threshold, model.seed_threshold,
                              model.sure_area, removed)


def hysteresis_mask(probability: np.ndarray, threshold: float, seed_threshold: float | None,
                    sure_area: int | None = None) -> tuple[np.ndarray, int]:
    """The uint8 mask of ``probability > threshold`` restricted to the 8-connected components whose
    peak reaches ``seed_threshold`` or whose area reaches ``sure_area`` pixels, and how many
    components that removed (none without a seed).

    Only small components need the seed's certainty: a pinhead dot must be near certain to count,
    while a pacemaker can that the network splits into grey pieces of middling certainty is kept
    for its size.  Nothing is removed for being small alone (DESIGN: no minimum area).

    Raises
    ------
    ValueError
        ``seed_threshold`` is below ``threshold`` (it would keep nothing more and mean nothing).
    """
    if seed_threshold is None:
        return (probability > threshold).astype(np.uint8), 0
    if seed_threshold < threshold:
        raise ValueError(f'Argument "seed_threshold" must not be below "threshold" ({threshold}), '
                         f"got {seed_threshold}")
    components = threshold_components(probability, threshold)
    keep = kept_components(components, seed_threshold, sure_area)
    return keep[components.labels].astype(np.uint8), int(keep.size - 1 - keep.sum())


class Components(NamedTuple):
    """The 8-connected components of ``probability > threshold``: a label image (0 = background)
    and, per label, its peak probability and its area in pixels."""

    labels: np.ndarray
    peaks: np.ndarray
    areas: np.ndarray


def threshold_components(probability: np.ndarray, threshold: float) -> Components:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (probability > threshold).astype(np.uint8), connectivity=8)
    peaks = np.zeros(count, np.float32)
    np.maximum.at(peaks, labels.ravel(), probability.ravel())
    return Components(labels, peaks, stats[:, cv2.CC_STAT_AREA])


def kept_components(components: Components, seed_threshold: float, sure_area: int | None) -> np.ndarray:
    """Per label, whether the hysteresis keeps it: its peak reaches the seed or its area the sure
    area (the background label never)."""
    keep = components.peaks >= seed_threshold
    if sure_area is not None:
        keep |= components.areas >= sure_area
    keep[0] = False
    return keep


def hysteresis_masks(probabilities: np.ndarray, threshold: float, seed_threshold: float | None,
                     sure_area: int | None = None) -> np.ndarray:
    """``hysteresis_mask`` of each (1, H, W) map of an (N, 1, H, W) stack, as booleans."""
    return np.stack([hysteresis_mask(p[0], threshold, seed_threshold, sure_area)[0]
                     for p in probabilities])[:, None].astype(bool)


def mask_at_source(probability: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """The binary mask at the source's rows x columns.

    The probability map is resized (bilinear) before thresholding, so edges at
    source resolution are smooth rather than 256-grid staircases.
    """
    from .preprocess import resize_image

    return (resize_image(probability, shape[0], shape[1]) > threshold).astype(np.uint8)


class SegmentationOperator(CaseOperator):
    """Sets ``case.segmentation`` (probability map and mask on the analysis grid)."""

    stage = "segmentation"
    chest_only = True

    def __init__(self, fragment: Fragment, *args, model: SegmentationModel, **kwargs) -> None:
        self.model = model
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        case.segmentation = segment(self.model, case.network_input)
