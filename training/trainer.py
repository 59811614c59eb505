"""Train a segmentation network with MONAI's SupervisedTrainer and export it as a MONAI bundle."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from xiqa.operators.segmentation import NetworkSpec, build_network, pick_device

from .losses import FocalTverskyLoss
from .metrics import json_safe, pooled_dice_recall

logger = logging.getLogger(__name__)


@dataclass
class Hyperparameters:
    """Network, schedule and Focal Tversky loss (DESIGN.md "The method" defaults) of both trainers."""

    spec: NetworkSpec = field(default_factory=NetworkSpec)
    epochs: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-4
    seed: int = 42
    alpha: float = 0.7
    beta: float = 0.3
    gamma: float = 0.75
    smooth: float = 1.0

    def loss(self) -> FocalTverskyLoss:
        return FocalTverskyLoss(self.alpha, self.beta, self.gamma, self.smooth)


@dataclass
class TrainConfig(Hyperparameters):
    device: str = "auto"
    num_threads: int | None = None
    initial_weights: Path | None = None  # a models/model.pt to continue from (fine-tuning)


PROGRESS_EVERY = 10  # batches between progress lines


def attach_progress_log(trainer, label: str, every: int = PROGRESS_EVERY) -> None:
    """One log line every ``every`` batches (epoch, batch, loss, seconds): progress that stays
    greppable in a log, where a progress bar would write carriage returns."""
    from ignite.engine import Events

    started = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED(every=every))
    def _progress(engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        logger.info("%s: epoch %d batch %d/%d loss %.4f (%.0f s)", label, engine.state.epoch,
                    (engine.state.iteration - 1) % engine.state.epoch_length + 1,
                    engine.state.epoch_length, float(loss), time.perf_counter() - started)


def _augment():
    from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandScaleIntensityd

    return Compose([
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.5),
        RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.5),
    ])


def train_network(train_samples, validation_samples: list[dict],
                  config: TrainConfig) -> tuple[torch.nn.Module, list[dict]]:
    """Train (from scratch or ``initial_weights``); the network with the best validation Dice and the history.

    ``train_samples`` is a list of samples (augmented here) or a dataset that makes its own
    (``composite.CompositeStream``).  Progress is logged every ``PROGRESS_EVERY`` batches.
    """
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    set_determinism(seed=config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
    network = build_network(config.spec)
    if config.initial_weights is not None:
        network.load_state_dict(torch.load(config.initial_weights, map_location="cpu", weights_only=True))
    network = network.to(device)
    dataset = (Dataset(train_samples, transform=_augment()) if isinstance(train_samples, list)
               else train_samples)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0)
    trainer = SupervisedTrainer(
        device=device, max_epochs=config.epochs, train_data_loader=loader, network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=config.learning_rate),
        loss_function=config.loss(),
    )
    history: list[dict] = []
    best = {"dice": -1.0, "state": None}
    started = time.perf_counter()

    attach_progress_log(trainer, "training")

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine) -> None:
        metrics = evaluate_network(network, validation_samples, device)
        record = {"epoch": engine.state.epoch, "loss": float(engine.state.output[0]["loss"]),
                  "seconds": round(time.perf_counter() - started, 1), **metrics}
        history.append(record)
        logger.info("epoch %(epoch)d loss %(loss).4f val dice %(dice).4f recall %(recall).4f",
                    record)
        if metrics["dice"] > best["dice"]:
            best["dice"] = metrics["dice"]
            best["state"] = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}

    trainer.run()
    if best["state"] is not None:
        network.load_state_dict(best["state"])
    return network.eval(), history


def predict_probabilities(network: torch.nn.Module, samples: list[dict], device: torch.device | None = None,
                          batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and boolean labels for ``samples``, in order."""
    device = device or next(network.parameters()).device
    was_training = network.training
    network.eval()
    probabilities, labels = [], []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            images = torch.from_numpy(np.stack([s["image"] for s in chunk])).to(device)
            probabilities.append(torch.sigmoid(network(images)).cpu().numpy())
            labels.append(np.stack([s["label"] for s in chunk]) > 0.5)
    network.train(was_training)
    return np.concatenate(probabilities), np.concatenate(labels)


def evaluate_network(network: torch.nn.Module, samples: list[dict],
                     device: torch.device | None = None, batch_size: int = 16,
                     threshold: float = 0.5) -> dict[str, float]:
    """Pooled Dice and recall of thresholded predictions over ``samples``."""
    probabilities, labels = predict_probabilities(network, samples, device, batch_size)
    return pooled_dice_recall(probabilities > threshold, labels)


CALIBRATION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SEED_THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)


SURE_AREAS = (200, 100, 50, 30, 20, 10)


@dataclass(frozen=True)
class Calibration:
    """A bundle's mask parameters, chosen on validation images only (never held-out ones)."""

    threshold: float
    seed_threshold: float | None
    sure_area: int | None
    dice_per_threshold: dict[str, float]
    object_cost_per_seed: dict[str, float]  # MISS_COST x missed + false objects, validation set
    object_cost_per_sure_area: dict[str, float]


def calibrate(network: torch.nn.Module, validation_samples: list[dict],
              thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS,
              seeds: tuple[float, ...] = SEED_THRESHOLDS) -> Calibration:
    """The threshold with the best pooled validation Dice, then the seed threshold and the sure
    area at that threshold (``choose_seed_threshold``, ``choose_sure_area``).

    Focal Tversky (alpha 0.7 on false negatives) trades precision for recall, so 0.5
    over-segments.
    """
    probabilities, labels = predict_probabilities(network, validation_samples)
    dice = {threshold: pooled_dice_recall(probabilities > threshold, labels)["dice"]
            for threshold in thresholds}
    threshold = max(dice, key=dice.get)
    seed, seed_costs = choose_seed_threshold(probabilities, labels, threshold, seeds)
    area, area_costs = choose_sure_area(probabilities, labels, threshold, seed)
    return Calibration(threshold, seed, area, {str(k): v for k, v in dice.items()}, seed_costs, area_costs)


#: a missed object costs as much as this many false ones: the training loss's weighting of false
#: negatives against false positives (Focal Tversky alpha 0.7, beta 0.3)
MISS_COST = 0.7 / 0.3


def object_cost(masks: np.ndarray, labels: np.ndarray, miss_cost: float = MISS_COST) -> float:
    """``miss_cost`` per missed object plus one per false object, objects as scoring counts them."""
    from .metrics import object_level_metrics

    found = object_level_metrics(masks, labels)
    missed = found["true_objects"] * (1 - found["object_sensitivity"]) if found["true_objects"] else 0
    return round(miss_cost * missed + found["false_objects_per_image"] * len(masks), 6)


def choose_seed_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float,
                          seeds: tuple[float, ...] = SEED_THRESHOLDS) -> tuple[float | None, dict]:
    """The hysteresis seed (``segmentation.hysteresis_mask``, no sure area) with the lowest
    ``object_cost`` over (N, 1, H, W) validation ``probabilities`` and ``labels``, and the cost
    per seed.

    Dice is a pixel measure and hardly sees a pinhead false object, so the seed is chosen on
    objects; of equal costs the lower seed (None, no seed, is the lowest) wins.
    """
    from xiqa.operators.segmentation import hysteresis_masks

    costs = {seed: object_cost(hysteresis_masks(probabilities, threshold, seed), labels)
             for seed in (None, *(seed for seed in seeds if seed >= threshold))}
    best = min(costs, key=lambda candidate: (costs[candidate], candidate or 0.0))
    return best, {str(k): v for k, v in costs.items()}


def choose_sure_area(probabilities: np.ndarray, labels: np.ndarray, threshold: float,
                     seed: float | None, areas: tuple[int, ...] = SURE_AREAS) -> tuple[int | None, dict]:
    """The component area above which the seed is not needed, by the lowest ``object_cost``; of
    equal costs the smallest area wins (it keeps the most).  None without a seed."""
    from xiqa.operators.segmentation import hysteresis_masks

    if seed is None:
        return None, {}
    costs = {area: object_cost(hysteresis_masks(probabilities, threshold, seed, area), labels)
             for area in (None, *areas)}
    best = min(costs, key=lambda candidate: (costs[candidate], candidate or float("inf")))
    return best, {str(k): v for k, v in costs.items()}


def write_bundle(folder: Path, network: torch.nn.Module, spec: NetworkSpec, *, name: str,
                 description: str, metrics: dict, training: dict, half_precision: bool = False,
                 image_size: int = 256, threshold: float = 0.5,
                 seed_threshold: float | None = None, sure_area: int | None = None) -> Path:
    """Write a MONAI bundle: configs/metadata.json, configs/inference.json, models/model.pt.

    ``image_size`` is the grid the network was trained on (the app always
    feeds 256 x 256).  Undefined metrics (NaN) are written as JSON null.
    """
    import monai

    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half_precision and v.is_floating_point() else v).cpu()
             for k, v in network.state_dict().items()}
    torch.save(state, folder / "models" / "model.pt")
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
                  "0.8.1/meta_schema_20220324.json",
        "name": name,
        "version": "0.1.0",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "segmentation-models-pytorch": _version("segmentation_models_pytorch")},
        "task": "Foreign-object segmentation on chest radiographs",
        "description": description,
        "authors": "xiqa",
        "copyright": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CR/DX",
                                 "num_channels": spec.in_channels,
                                 "spatial_shape": [image_size, image_size],
                                 "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False}},
            "outputs": {"pred": {"type": "image", "format": "logits", "num_channels": spec.classes,
                                 "spatial_shape": [image_size, image_size],
                                 "dtype": "float32", "value_range": [], "is_patch_data": False}},
        },
        "xiqa": {"network": asdict(spec), "threshold": threshold, "seed_threshold": seed_threshold,
                 "sure_area": sure_area,
                 "metrics": json_safe(metrics),
                 "training": json_safe(training),
                 "platform": platform.platform()},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    inference = {
        "network_def": {"_target_": f"segmentation_models_pytorch.{spec.architecture}",
                        "encoder_name": spec.encoder, "encoder_weights": None,
                        "in_channels": spec.in_channels, "classes": spec.classes},
        "network": "$@network_def.to(torch.device('cpu'))",
        "imports": ["$import torch", "$import segmentation_models_pytorch"],
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    return folder


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"
