"""Checks of saliency maps, used by training (cross-validation) and the tests.

Definitions (DESIGN.md, "Evaluation metrics"):

- Perturbation curves.  Pixels are ranked by saliency, highest first (ties in
  raster order, so the ranking is deterministic).  *Deletion* sets the top k %
  of pixels to the baseline (0, every channel) for k = 0, 10, ..., 100;
  *insertion* starts from the baseline image and puts the top k % back.  The
  score at each step is the Dice of the mask predicted on the perturbed image
  against the mask predicted on the original image (two empty masks: 1.0, as
  in ``training.metrics``).  The AUC is the trapezoidal area under the
  11-point curve over x in [0, 1].  A faithful map gives a low deletion AUC
  and a high insertion AUC.
- Drop: the Dice after deleting the top 20 % (the deletion curve at 0.2).
- Pointing game: a hit when the saliency maximum (first maximum in raster
  order) lies in the ground truth, or within ``tolerance`` pixels of it
  (seeds/002 used 15).  **An empty ground truth is excluded**: there is
  nothing to point at, so the image is neither a hit nor a miss and the
  accuracy is hits / (hits + misses) over images with an object; the number
  excluded is reported beside it.  (Counting it as a hit, as one popular
  library does, rewards any map on object-free images; counting it as a miss
  punishes a map for a question that has no answer.)  A constant map points
  nowhere and is a miss.  With no image left the accuracy is NaN.
- Cascading model-parameter randomisation (Adebayo et al. 2018): on a copy of
  the network, blocks are randomised from the output towards the input, one
  more at each step, and the map after each step is compared with the
  original by Spearman rank correlation.  Each parameter tensor is replaced by
  Gaussian noise with that tensor's mean and standard deviation (a constant
  tensor, e.g. a batch-norm weight of 1, gets 0.1 |mean| + 0.01), so scales
  stay plausible while the learned structure is gone.  An explainer passes
  when the fully randomised map's correlation is below ``threshold``; one that
  ignores the model (an edge detector) stays at 1.0 and fails.
- Repeatability (seeds/002): per image, the Spearman correlation between the
  maps of two networks (e.g. retrained with another seed); the difference of
  means (DoM) compares pointing-game accuracies of two architectures.

Rank correlation of two constant maps is 1.0 (identical), of a constant and a
non-constant map 0.0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from .metrics import dice_score

#: Maps a (N, C, H, W) float32 batch to (N, H, W) boolean masks.
Predictor = Callable[[np.ndarray], np.ndarray]
#: Maps (network, one (C, H, W) image) to an (H, W) saliency map.
Explainer = Callable[[nn.Module, np.ndarray], np.ndarray]

PERTURBATION_STEPS = 10
DROP_FRACTION = 0.2
RANDOMIZATION_THRESHOLD = 0.5


def network_predictor(network: nn.Module, threshold: float = 0.5, batch_size: int = 8) -> Predictor:
    """A ``Predictor`` from a network that returns logits: ``sigmoid(logits) > threshold``.

    Eval mode for the duration of each call; the network's mode is restored.
    """
    def predict(batch: np.ndarray) -> np.ndarray:
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        try:
            masks = []
            with torch.no_grad():
                for start in range(0, len(batch), batch_size):
                    chunk = torch.as_tensor(np.ascontiguousarray(batch[start:start + batch_size]),
                                            dtype=torch.float32, device=device)
                    output = network(chunk)
                    output = output[0] if isinstance(output, (tuple, list)) else output
                    masks.append((torch.sigmoid(output[:, 0]) > threshold).cpu().numpy())
            return np.concatenate(masks)
        finally:
            network.train(was_training)
    return predict


def _check_pair(image: np.ndarray, saliency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    saliency = np.asarray(saliency, dtype=np.float64)
    if image.ndim != 3 or saliency.shape != image.shape[1:]:
        raise ValueError(f'Arguments "image" (C, H, W) and "saliency" (H, W) must agree, got '
                         f"{image.shape} and {saliency.shape}")
    return image, saliency


def saliency_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties keep raster order."""
    return np.argsort(-np.asarray(saliency, dtype=np.float64).ravel(), kind="stable")


def perturbation_curve(predict: Predictor, image: np.ndarray, saliency: np.ndarray,
                       mode: str = "deletion", steps: int = PERTURBATION_STEPS,
                       baseline: float = 0.0) -> np.ndarray:
    """Dice vs the unperturbed prediction after deleting/inserting the top k/steps of pixels.

    Returns ``steps + 1`` scores, from 0 % to 100 % perturbed.

    Raises
    ------
    ValueError
        For an unknown ``mode``, fewer than one step, or mismatched shapes.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f'Argument "mode" must be "deletion" or "insertion", got {mode!r}')
    if steps < 1:
        raise ValueError(f'Argument "steps" must be at least 1, got {steps}')
    image, saliency = _check_pair(image, saliency)
    pixels = saliency.size
    order = saliency_order(saliency)
    batch = np.empty((steps + 1, *image.shape), dtype=np.float32)
    for step in range(steps + 1):
        chosen = np.zeros(pixels, dtype=bool)
        chosen[order[:round(step * pixels / steps)]] = True
        chosen = chosen.reshape(saliency.shape)
        if mode == "deletion":
            batch[step] = np.where(chosen, np.float32(baseline), image)
        else:
            batch[step] = np.where(chosen, image, np.float32(baseline))
    masks = predict(np.concatenate([image[None], batch]))
    original = masks[0]
    return np.array([dice_score(mask, original) for mask in masks[1:]])


def curve_auc(curve: Sequence[float]) -> float:
    """Trapezoidal area under a curve sampled evenly on [0, 1]."""
    values = np.asarray(curve, dtype=np.float64)
    return float(np.sum((values[1:] + values[:-1]) / 2) / (len(values) - 1))


def deletion_auc(predict: Predictor, image: np.ndarray, saliency: np.ndarray,
                 steps: int = PERTURBATION_STEPS, baseline: float = 0.0) -> float:
    """Area under the deletion curve (lower is more faithful)."""
    return curve_auc(perturbation_curve(predict, image, saliency, "deletion", steps, baseline))


def insertion_auc(predict: Predictor, image: np.ndarray, saliency: np.ndarray,
                  steps: int = PERTURBATION_STEPS, baseline: float = 0.0) -> float:
    """Area under the insertion curve (higher is more faithful)."""
    return curve_auc(perturbation_curve(predict, image, saliency, "insertion", steps, baseline))


def drop(predict: Predictor, image: np.ndarray, saliency: np.ndarray,
         fraction: float = DROP_FRACTION, baseline: float = 0.0) -> float:
    """Dice of the prediction after deleting the top ``fraction`` of pixels (lower: faithful)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f'Argument "fraction" must lie in [0, 1], got {fraction}')
    image, saliency = _check_pair(image, saliency)
    chosen = np.zeros(saliency.size, dtype=bool)
    chosen[saliency_order(saliency)[:round(fraction * saliency.size)]] = True
    perturbed = np.where(chosen.reshape(saliency.shape), np.float32(baseline), image)
    masks = predict(np.stack([image, perturbed]))
    return dice_score(masks[1], masks[0])


@dataclass(frozen=True)
class PointingGameResult:
    """``accuracy`` = hits / (hits + misses); images with an empty ground truth are ``excluded``."""

    accuracy: float
    hits: int
    misses: int
    excluded: int


def pointing_hit(saliency: np.ndarray, truth: np.ndarray, tolerance: float = 0.0) -> bool | None:
    """Whether the saliency maximum lies in (or within ``tolerance`` px of) the truth.

    Returns None for an empty ground truth (excluded from the game).
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    if saliency.shape != truth.shape or saliency.ndim != 2:
        raise ValueError(f'Arguments "saliency" and "truth" must be 2-D of one shape, got '
                         f"{saliency.shape} and {truth.shape}")
    if tolerance < 0:
        raise ValueError(f'Argument "tolerance" must not be negative, got {tolerance}')
    if not truth.any():
        return None
    if not np.isfinite(saliency).all() or saliency.max() == saliency.min():
        return False
    point = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    if truth[point]:
        return True
    return bool(tolerance > 0 and ndimage.distance_transform_edt(~truth)[point] <= tolerance)


def pointing_game(saliencies: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                  tolerance: float = 0.0) -> PointingGameResult:
    """Pointing-game accuracy over images; see the module docstring for the empty-truth rule."""
    if len(saliencies) != len(truths):
        raise ValueError(f'Arguments "saliencies" and "truths" differ in length: '
                         f"{len(saliencies)} and {len(truths)}")
    outcomes = [pointing_hit(s, t, tolerance) for s, t in zip(saliencies, truths, strict=True)]
    hits = sum(1 for o in outcomes if o is True)
    misses = sum(1 for o in outcomes if o is False)
    excluded = sum(1 for o in outcomes if o is None)
    accuracy = hits / (hits + misses) if hits + misses else math.nan
    return PointingGameResult(accuracy, hits, misses, excluded)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps (constant-map conventions in the module docstring)."""
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f'Arguments "first" and "second" must have one size, got {a.size} '
                         f"and {b.size}")
    constant_a, constant_b = a.min() == a.max(), b.min() == b.max()
    if constant_a or constant_b:
        return 1.0 if constant_a and constant_b else 0.0
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class RandomizationStep:
    """The map after randomising every block down to and including ``block``."""

    block: str
    rank_correlation: float


@dataclass(frozen=True)
class RandomizationResult:
    steps: tuple[RandomizationStep, ...]
    threshold: float

    @property
    def passed(self) -> bool:
        """The fully randomised network's map differs from the original one."""
        return self.steps[-1].rank_correlation < self.threshold


def randomization_blocks(network: nn.Module, depth: int = 2) -> list[str]:
    """Module names that own parameters, cut to ``depth`` name parts, output side first."""
    blocks: list[str] = []
    for name, _ in network.named_parameters():
        block = ".".join(name.split(".")[:-1][:depth])
        if block not in blocks:
            blocks.append(block)
    return blocks[::-1]


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            values = parameter.detach().double().cpu()
            mean = float(values.mean())
            spread = float(values.std()) if values.numel() > 1 else 0.0
            if not spread > 0:
                spread = 0.1 * abs(mean) + 0.01
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            noise = noise * spread + mean
            parameter.copy_(noise.to(parameter.dtype))


def cascading_randomization(network: nn.Module, image: np.ndarray, explain: Explainer,
                            blocks: Sequence[str] | None = None, seed: int = 0,
                            threshold: float = RANDOMIZATION_THRESHOLD) -> RandomizationResult:
    """Rank correlation with the original map after each cumulative randomisation step.

    Works on a deep copy; the caller's network is not changed.  ``blocks``
    default to ``randomization_blocks(network)`` (output side first).
    """
    blocks = list(blocks) if blocks is not None else randomization_blocks(network)
    if not blocks:
        raise ValueError('Argument "blocks" is empty: nothing to randomise')
    model = copy.deepcopy(network)
    original = np.asarray(explain(model, image))
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for block in blocks:
        _randomize(model.get_submodule(block) if block else model, generator)
        steps.append(RandomizationStep(block, rank_correlation(original, explain(model, image))))
    return RandomizationResult(tuple(steps), threshold)


@dataclass(frozen=True)
class RepeatabilityResult:
    """Per-image rank correlations between the maps of two networks, and their mean and std."""

    correlations: tuple[float, ...]
    mean: float
    std: float


def repeatability(maps_a: Sequence[np.ndarray],
                  maps_b: Sequence[np.ndarray]) -> RepeatabilityResult:
    """How much two networks (e.g. two training seeds) agree on where the saliency is."""
    if len(maps_a) != len(maps_b) or not len(maps_a):
        raise ValueError('Arguments "maps_a" and "maps_b" must be non-empty and of one length, '
                         f"got {len(maps_a)} and {len(maps_b)}")
    values = tuple(rank_correlation(a, b) for a, b in zip(maps_a, maps_b, strict=True))
    return RepeatabilityResult(values, float(np.mean(values)), float(np.std(values)))


def difference_of_means(accuracies_a: Sequence[float], accuracies_b: Sequence[float]) -> float:
    """seeds/002's DoM: |mean(a) - mean(b)| of pointing-game accuracies of two architectures."""
    return abs(float(np.mean(accuracies_a)) - float(np.mean(accuracies_b)))


def evaluate_explanations(network: nn.Module, images: torch.Tensor | np.ndarray, labels: np.ndarray,
                          methods: Sequence[str] = ("gradcam", "normgrad0"), config=None,
                          tolerance: float = 0.0) -> dict:
    """Pointing game, deletion/insertion AUC and drop per saliency method, for training reports.

    ``images`` are (N, C, H, W), ``labels`` (N, H, W) ground-truth masks.
    ``config`` is a ``SaliencyConfig`` (default: the network's default layers).
    Returns plain numbers, ready for JSON.
    """
    from xiqa.operators.saliency import SaliencyConfig, compute_saliencies

    if isinstance(images, torch.Tensor):
        batch = images.detach().cpu().numpy()
    else:
        batch = np.asarray(images)
    labels = np.asarray(labels).astype(bool)
    if batch.ndim != 4 or labels.shape != (batch.shape[0], *batch.shape[2:]):
        raise ValueError(f'Arguments "images" (N, C, H, W) and "labels" (N, H, W) must agree, got '
                         f"{batch.shape} and {labels.shape}")
    results = compute_saliencies(network, batch, config or SaliencyConfig(), methods=methods)
    predict = network_predictor(network)
    report = {}
    for method, result in results.items():
        maps = result.combined
        pairs = list(zip(batch, maps, strict=True))
        game = pointing_game(list(maps), list(labels), tolerance)
        report[method] = {
            "pointing_game": game.accuracy, "pointing_hits": game.hits,
            "pointing_misses": game.misses, "pointing_excluded": game.excluded,
            "deletion_auc": float(np.mean([deletion_auc(predict, i, m) for i, m in pairs])),
            "insertion_auc": float(np.mean([insertion_auc(predict, i, m) for i, m in pairs])),
            "drop": float(np.mean([drop(predict, i, m) for i, m in pairs])),
            "saliency_seconds": result.timings.get("total"),
        }
    return report
