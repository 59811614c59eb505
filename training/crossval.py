"""K-fold cross-validation with MONAI engines: one MONAI bundle and held-out metrics per fold.

Layout under the output folder::

    run.json                     configuration + data fingerprint (a restart must match it)
    splits.json                  per fold: train / validation / test image ids
    problems.txt                 every skipped CSV row, file or image, with its reason
    work/fold_K/checkpoint.pt    last epoch (weights, optimizer, engine, best weights, counters)
    work/fold_K/history.csv      per epoch: train loss, validation Dice, best so far, seconds
    work/fold_K/per_image.csv    held-out metrics per test image
    bundles/fold_K/              MONAI bundle: configs/metadata.json, configs/inference.json,
                                 models/model.pt
    cv_summary.json / .md / .png mean ± std over folds

``load_segmentation_model(OUTPUT / "bundles")`` loads the K folds as an
ensemble, ``load_segmentation_model(OUTPUT / "bundles" / "fold_0")`` one fold.

Per fold, ``SupervisedTrainer`` fits on the fold's training images;
``SupervisedEvaluator`` (run each epoch by ``ValidationHandler``) scores the
validation images (a stratified part of the training images) with pooled
Dice, which picks the best epoch and drives early stopping; a second
``SupervisedEvaluator`` then scores the best weights on the fold's *test*
images only, which no part of the fold's training has seen.

Resuming: a fold whose bundle exists is done and is not retrained; a fold
with ``work/fold_K/checkpoint.pt`` continues after that epoch; the rest start
from scratch.  A fold's bundle is written to ``work/`` and renamed into
``bundles/`` as its last step, so ``bundles/`` only ever holds complete folds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from xiqa.durable import write_bytes_atomically
from xiqa.operators.segmentation import build_network, pick_device

from .datasets import evaluation_transforms, training_transforms
from .handlers import (
    CHECKPOINT_NAME,
    EpochSampler,
    EpochSeeder,
    FoldCheckpointer,
    derive_seed,
)
from .metrics import (
    METRIC_NAMES,
    json_safe,
    mean_std,
    pooled_dice_recall,
    segmentation_metrics,
    summarise,
)
from .splits import Fold, make_folds
from .trainer import Hyperparameters, attach_progress_log

logger = logging.getLogger(__name__)

RUN_NAME, SPLITS_NAME = "run.json", "splits.json"
EXPLANATION_BATCH = 4
SUMMARY_NAME = "cv_summary"
#: Configuration fields that do not change the result; a restart may change them.
RUNTIME_FIELDS = ("device", "workers", "threads", "progress", "keep_checkpoints")


class ResumeMismatch(ValueError):
    """The output folder holds a run with another configuration or other data."""


@dataclass
class CrossValConfig(Hyperparameters):
    """Everything that defines a cross-validation run (DESIGN.md "The method" defaults)."""

    folds: int = 5
    image_size: int = 256
    validation_fraction: float = 0.1
    patience: int = 0
    augment: bool = True
    boundary_dilation_ratio: float = 0.02
    explanations: bool = True
    explanation_images: int = 16
    explanation_methods: tuple[str, ...] = ("gradcam", "normgrad0", "normgrad1")
    # runtime only (RUNTIME_FIELDS)
    device: str = "auto"
    workers: int = 0
    threads: int | None = None
    progress: bool = True
    keep_checkpoints: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The fields a restart must repeat exactly."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


@dataclass
class FoldResult:
    fold: int
    bundle: Path
    metrics: dict
    training: dict


# --------------------------------------------------------------------------- metrics on the engine

class PooledDiceMetric:
    """Pooled Dice over all pixels of all images, as a MONAI ``CumulativeIterationMetric``.

    Built lazily (``make``) so that importing this module does not import MONAI.
    Pooled rather than per-image Dice for model selection: with many images
    without objects, a per-image mean rewards predicting nothing.
    """

    @staticmethod
    def make():
        from monai.metrics import CumulativeIterationMetric

        class _PooledDice(CumulativeIterationMetric):
            def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None,
                                **kwargs):
                prediction, truth = y_pred > 0.5, y > 0.5
                dims = tuple(range(1, prediction.ndim))
                return torch.stack([(prediction & truth).sum(dims), prediction.sum(dims),
                                    truth.sum(dims)], dim=1).float()

            def aggregate(self):
                buffer = self.get_buffer()
                totals = buffer.sum(0) if isinstance(buffer, torch.Tensor) else torch.zeros(3)
                denominator = totals[1] + totals[2]
                return torch.tensor(1.0) if denominator == 0 else 2 * totals[0] / denominator

        return _PooledDice()


class PerImageCollector:
    """Collects ``segmentation_metrics`` for every image an evaluator sees (ITERATION_COMPLETED)."""

    def __init__(self, dilation_ratio: float = 0.02) -> None:
        self.dilation_ratio = dilation_ratio
        self.rows: list[dict] = []
        self.predictions: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        for batch_item, output in zip(engine.state.batch, engine.state.output, strict=True):
            prediction = output["pred"].detach().cpu().numpy()[0] > 0.5
            truth = output["label"].detach().cpu().numpy()[0] > 0.5
            row = {"id": batch_item["id"], "truth_pixels": int(truth.sum()),
                   "predicted_pixels": int(prediction.sum())}
            row.update(segmentation_metrics(prediction, truth, self.dilation_ratio))
            self.rows.append(row)
            self.predictions.append(prediction)
            self.labels.append(truth)


def _postprocessing():
    from monai.transforms import Activationsd, AsDiscreted, Compose

    return Compose([Activationsd(keys="pred", sigmoid=True),
                    AsDiscreted(keys="pred", threshold=0.5)])


def _loader(samples: list[dict], transform, batch_size: int, workers: int, sampler=None,
            generator: torch.Generator | None = None):
    from monai.data import DataLoader, Dataset

    return DataLoader(Dataset(samples, transform=transform), batch_size=batch_size, sampler=sampler,
                      shuffle=False, num_workers=workers, generator=generator)


def evaluate_samples(network: torch.nn.Module, samples: list[dict], config: CrossValConfig,
                     device: torch.device) -> tuple[dict, list[dict]]:
    """Held-out metrics of ``network`` on ``samples`` with a MONAI ``SupervisedEvaluator``.

    Returns the summary (per-image means with their image counts, plus pooled
    Dice/recall) and the per-image rows.
    """
    from monai.engines import SupervisedEvaluator

    collector = PerImageCollector(config.boundary_dilation_ratio)
    loader = _loader(samples, evaluation_transforms(config.spec.in_channels), config.batch_size,
                     config.workers)
    evaluator = SupervisedEvaluator(device=device, val_data_loader=loader, network=network,
                                    postprocessing=_postprocessing(), val_handlers=[collector])
    evaluator.run()
    summary = summarise(collector.rows)
    if collector.rows:
        pooled = pooled_dice_recall(np.stack(collector.predictions), np.stack(collector.labels))
        summary.update({"pooled_dice": pooled["dice"], "pooled_recall": pooled["recall"]})
    summary["images_with_objects"] = sum(1 for row in collector.rows if row["truth_pixels"])
    return summary, collector.rows


# --------------------------------------------------------------------------- one fold

def train_fold(fold: Fold, samples: list[dict], config: CrossValConfig, folder: Path,
               device: torch.device) -> tuple[torch.nn.Module, FoldCheckpointer]:
    """Train one fold (resumes from ``folder/checkpoint.pt``); returns the best network."""
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import CheckpointLoader, IgniteMetricHandler, ValidationHandler
    from monai.handlers.utils import from_engine
    from monai.utils import set_determinism

    folder.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=derive_seed(config.seed, fold.index))
    network = build_network(config.spec).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    train_samples = [samples[i] for i in fold.train]
    validation_samples = [samples[i] for i in (fold.validation or fold.train)]

    augment = training_transforms(config.spec.in_channels, config.augment, config.image_size)
    sampler = EpochSampler(len(train_samples), derive_seed(config.seed, fold.index, 0))
    generator = torch.Generator()
    train_loader = _loader(train_samples, augment, config.batch_size, config.workers, sampler,
                           generator)
    validation_loader = _loader(validation_samples, evaluation_transforms(config.spec.in_channels),
                                config.batch_size, config.workers)

    evaluator = SupervisedEvaluator(
        device=device, val_data_loader=validation_loader, network=network,
        postprocessing=_postprocessing(),
        key_val_metric={"val_dice": IgniteMetricHandler(
            metric_fn=PooledDiceMetric.make(), output_transform=from_engine(["pred", "label"]),
            save_details=False)},
    )
    trainer = SupervisedTrainer(
        device=device, max_epochs=config.epochs, train_data_loader=train_loader, network=network,
        optimizer=optimizer,
        loss_function=config.loss(),
    )
    checkpointer = FoldCheckpointer(folder, network, optimizer, evaluator, "val_dice",
                                    patience=config.patience)
    # Order matters: seed before the epoch's first batch, validate before the checkpointer
    # reads the score, load the checkpoint at STARTED before anything else.
    handlers = [EpochSeeder(config.seed, fold.index, sampler, augment, generator),
                ValidationHandler(validator=evaluator, interval=1, epoch_level=True)]
    if checkpointer.checkpoint_path.is_file():
        handlers.insert(0, CheckpointLoader(str(checkpointer.checkpoint_path),
                                            checkpointer.save_dict(trainer), map_location=device))
        logger.info("fold %d: resuming from %s", fold.index, checkpointer.checkpoint_path.name)
    for handler in handlers:
        handler.attach(trainer)
    checkpointer.attach(trainer)
    if config.progress and sys.stderr.isatty():
        from ignite.handlers import ProgressBar

        loss_of = from_engine(["loss"], first=True)
        ProgressBar(persist=False, desc=f"fold {fold.index}").attach(
            trainer, output_transform=lambda output: {"loss": float(loss_of(output))})
    elif config.progress:  # a log, not a terminal: lines, never carriage returns
        attach_progress_log(trainer, f"fold {fold.index}")
    _attach_tensorboard(trainer, evaluator, folder)

    if not _already_finished(checkpointer.checkpoint_path, config):
        trainer.run()
    else:  # the checkpoint says this fold finished (all epochs or early stop): just restore it
        from ignite.handlers import Checkpoint

        state = torch.load(checkpointer.checkpoint_path, map_location=device, weights_only=True)
        Checkpoint.load_objects(checkpointer.save_dict(trainer), state)
    network.load_state_dict(checkpointer.best.state)
    return network.eval(), checkpointer


def _already_finished(checkpoint: Path, config: CrossValConfig) -> bool:
    if not checkpoint.is_file():
        return False
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return bool(state["progress"]["stopped_early"]) or int(state["trainer"]["iteration"]) >= \
        config.epochs * int(state["trainer"]["epoch_length"])


def _attach_tensorboard(trainer, evaluator, folder: Path) -> None:
    """TensorBoard event files when tensorboard is installed; the CSV history is always written."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    from monai.handlers import TensorBoardStatsHandler
    from monai.handlers.utils import from_engine

    log_dir = str(folder / "tensorboard")
    TensorBoardStatsHandler(log_dir=log_dir, tag_name="train_loss",
                            output_transform=from_engine(["loss"], first=True)).attach(trainer)
    TensorBoardStatsHandler(log_dir=log_dir, iteration_log=False, output_transform=lambda x: None,
                            global_epoch_transform=lambda _: trainer.state.epoch).attach(evaluator)


# --------------------------------------------------------------------------- the whole run

def run_cross_validation(samples: list[dict], output: Path, config: CrossValConfig, *,
                         data: dict, command: str = "", bundle_name: str = "xiqa_seg",
                         problems: list[str] | None = None) -> dict:
    """Train and evaluate all folds (resuming what an earlier run left); returns the CV summary.

    ``samples`` come from ``prepare_samples``; ``data`` describes the source
    for the metadata (format, folder name, counts; no patient data).

    Raises
    ------
    ResumeMismatch
        ``output`` holds a run with another configuration or other images.
    ValueError
        Fewer images than folds.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    ids = [sample["id"] for sample in samples]
    if len(set(ids)) != len(ids):
        raise ValueError('Argument "samples" has duplicate ids: folds could not be disjoint')
    fingerprint = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    _check_or_write_run(output, config, data, fingerprint, command)
    if problems:
        write_bytes_atomically(output / "problems.txt", ("\n".join(problems) + "\n").encode())

    has_object = [bool(np.asarray(sample["label"]).any()) for sample in samples]
    folds = make_folds(has_object, config.folds, config.seed, config.validation_fraction)
    _write_splits(output, folds, ids, has_object)

    device = pick_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        results = [run_fold(fold, samples, output, config, device, data=data, command=command,
                            bundle_name=bundle_name) for fold in folds]
    finally:
        torch.set_num_threads(previous_threads)
    summary = summarise_folds(results, config, data, command)
    write_summary(output, summary)
    return summary


def run_fold(fold: Fold, samples: list[dict], output: Path, config: CrossValConfig, device,
             *, data: dict, command: str, bundle_name: str) -> FoldResult:
    """One fold: skip if its bundle exists, else train (or resume), evaluate, write the bundle."""
    from xiqa.operators.segmentation import read_metadata

    from .trainer import write_bundle

    bundle = output / "bundles" / f"fold_{fold.index}"
    work = output / "work" / f"fold_{fold.index}"
    if (bundle / "configs" / "metadata.json").is_file():
        xiqa = read_metadata(bundle)["xiqa"]
        logger.info("fold %d: bundle exists, not retrained", fold.index)
        return FoldResult(fold.index, bundle, xiqa["metrics"], xiqa["training"])

    logger.info("fold %d/%d: %d train, %d validation, %d test images", fold.index + 1, config.folds,
                len(fold.train), len(fold.validation), len(fold.test))
    network, checkpointer = train_fold(fold, samples, config, work, device)
    started = time.perf_counter()
    test_samples = [samples[i] for i in fold.test]
    logger.info("fold %d: held-out evaluation of %d images", fold.index, len(test_samples))
    held_out, rows = evaluate_samples(network, test_samples, config, device)
    _write_per_image(work / "per_image.csv", rows)
    explanation = fold_explanation_metrics(network, test_samples, config, device)
    evaluation_seconds = time.perf_counter() - started
    metrics = {"held_out": held_out, "held_out_images": len(fold.test),
               "validation_best": checkpointer.best_metric, "explanations": explanation,
               "conventions": "see xiqa.training.metrics (empty masks: NaN excluded from means)"}
    training = {
        "command": command, "fold": fold.index, "folds": config.folds, "seed": config.seed,
        "data": data, "train_images": len(fold.train), "validation_images": len(fold.validation),
        "test_images": len(fold.test), "epochs": config.epochs,
        "epochs_run": len(checkpointer.history), "best_epoch": checkpointer.best_epoch,
        "stopped_early": checkpointer.stopped_early, "batch_size": config.batch_size,
        "learning_rate": config.learning_rate, "image_size": config.image_size,
        "loss": f"FocalTversky({config.alpha}, {config.beta}, {config.gamma}, {config.smooth})",
        "augment": config.augment, "patience": config.patience,
        "train_seconds": round(checkpointer.seconds, 2),
        "evaluation_seconds": round(evaluation_seconds, 2), "device": str(device),
        "threads": torch.get_num_threads(), "history": checkpointer.history,
    }
    staging = work / "bundle"
    if staging.exists():
        shutil.rmtree(staging)
    write_bundle(staging, network, config.spec, name=bundle_name,
                 description=f"DeepLabV3+ fold {fold.index} of {config.folds}-fold "
                             f"cross-validation on {data.get('format', 'unknown')} data",
                 metrics=metrics, training=training, image_size=config.image_size)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, bundle)  # the rename makes the fold complete, all at once
    if not config.keep_checkpoints:
        (work / CHECKPOINT_NAME).unlink(missing_ok=True)
    logger.info("fold %d held-out: dice %.4f recall %.4f biou %.4f assd %.2f hd95 %.2f", fold.index,
                held_out["dice"], held_out["recall"], held_out["boundary_iou"], held_out["assd"],
                held_out["hd95"])
    return FoldResult(fold.index, bundle, metrics, training)


def fold_explanation_metrics(network: torch.nn.Module, samples: list[dict], config: CrossValConfig,
                             device: torch.device) -> dict:
    """Saliency faithfulness on the fold's held-out images (``explanation_metrics``).

    For each method of ``config.explanation_methods`` (Grad-CAM, NormGrad
    order 0 and 1 by default): pointing-game accuracy, deletion and insertion
    AUC and drop, over the first ``config.explanation_images`` held-out images
    that hold an object (test order, so the choice is deterministic).  Images
    without objects are left out: the pointing game excludes them anyway, and
    perturbing an image whose prediction is empty measures nothing.  Images
    go through the saliency code ``EXPLANATION_BATCH`` at a time to bound
    memory; the counts are summed and the per-image means weighted.
    """
    if not config.explanations:
        return {"status": "disabled"}
    from .explanation_metrics import evaluate_explanations

    chosen = [s for s in samples if np.asarray(s["label"]).any()][:config.explanation_images]
    if not chosen:
        return {"status": "no held-out image with objects"}
    started = time.perf_counter()
    network = network.to(device).eval()
    channels = config.spec.in_channels
    merged: dict[str, dict] = {}
    for start in range(0, len(chosen), EXPLANATION_BATCH):
        chunk = chosen[start:start + EXPLANATION_BATCH]
        images = np.stack([np.repeat(np.asarray(s["image"], np.float32), channels, axis=0)
                           for s in chunk])
        labels = np.stack([np.asarray(s["label"])[0] > 0 for s in chunk])
        logger.info("explanation metrics (%s): images %d-%d of %d (%.0f s so far)",
                    ", ".join(config.explanation_methods), start + 1, start + len(chunk), len(chosen),
                    time.perf_counter() - started)
        report = evaluate_explanations(network, images, labels,
                                       methods=tuple(config.explanation_methods))
        for method, values in report.items():
            _merge_explanations(merged.setdefault(method, {}), values, len(chunk))
    result: dict = {"status": "ok", "images": len(chosen),
                    "seconds": round(time.perf_counter() - started, 2)}
    for method, totals in merged.items():
        judged = totals["pointing_hits"] + totals["pointing_misses"]
        result[method] = {
            "pointing_game": totals["pointing_hits"] / judged if judged else math.nan,
            "pointing_hits": totals["pointing_hits"], "pointing_misses": totals["pointing_misses"],
            "pointing_excluded": totals["pointing_excluded"],
            **{name: totals[name] / totals["images"]
               for name in ("deletion_auc", "insertion_auc", "drop")},
            "saliency_seconds": round(totals["saliency_seconds"], 2),
        }
    return result


def _merge_explanations(totals: dict, values: dict, images: int) -> None:
    totals["images"] = totals.get("images", 0) + images
    for name in ("pointing_hits", "pointing_misses", "pointing_excluded"):
        totals[name] = totals.get(name, 0) + int(values[name])
    for name in ("deletion_auc", "insertion_auc", "drop"):
        totals[name] = totals.get(name, 0.0) + float(values[name]) * images
    totals["saliency_seconds"] = totals.get("saliency_seconds", 0.0) + \
        float(values.get("saliency_seconds") or 0.0)


# --------------------------------------------------------------------------- files

def _check_or_write_run(output: Path, config: CrossValConfig, data: dict, fingerprint: str,
                        command: str) -> None:
    path = output / RUN_NAME
    wanted = {"config": config.identity(), "data_fingerprint": fingerprint,
              "images": data.get("images")}
    if path.is_file():
        previous = json.loads(path.read_text())
        old = {key: previous.get(key) for key in wanted}
        if json.loads(json.dumps(wanted)) != old:
            old_config = old["config"] or {}
            new_config = json.loads(json.dumps(wanted["config"]))
            changed = sorted(k for k in new_config if old_config.get(k) != new_config[k])
            if old["data_fingerprint"] != fingerprint:
                changed.append("data (image ids)")
            raise ResumeMismatch(f"{output} holds a run with different settings "
                                 f"({', '.join(changed)}); use a new --output or the same "
                                 "settings to resume")
        logger.info("resuming the run in %s", output)
        return
    record = {**wanted, "command": command, "data": data, "torch": torch.__version__,
              "runtime": {key: getattr(config, key) for key in RUNTIME_FIELDS}}
    write_bytes_atomically(path, json.dumps(record, indent=2).encode())


def _write_splits(output: Path, folds: list[Fold], ids: list[str], has_object: list[bool]) -> None:
    splits = [{"fold": f.index,
               "train": [ids[i] for i in f.train], "validation": [ids[i] for i in f.validation],
               "test": [ids[i] for i in f.test],
               "test_with_objects": sum(has_object[i] for i in f.test)} for f in folds]
    write_bytes_atomically(output / SPLITS_NAME, json.dumps(splits, indent=1).encode())


def _write_per_image(path: Path, rows: list[dict]) -> None:
    fields = ["id", "truth_pixels", "predicted_pixels", *METRIC_NAMES]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomically(path, text.getvalue().encode())


def summarise_folds(results: list[FoldResult], config: CrossValConfig, data: dict,
                    command: str) -> dict:
    """Mean ± std over folds of every held-out metric (and of the training/evaluation times)."""
    names = [*METRIC_NAMES, "pooled_dice", "pooled_recall"]
    per_fold = []
    for result in results:
        held_out = result.metrics["held_out"]
        row = {"fold": result.fold, **{name: _number(held_out.get(name)) for name in names},
               "test_images": result.training["test_images"],
               "best_epoch": result.training["best_epoch"],
               "epochs_run": result.training["epochs_run"],
               "train_seconds": result.training["train_seconds"],
               "evaluation_seconds": result.training["evaluation_seconds"],
               "bundle": result.bundle.name}
        for key, value in _flatten(result.metrics.get("explanations", {})).items():
            row[f"explanation.{key}"] = value
        per_fold.append(row)
    numeric = [key for key in per_fold[0] if key not in ("fold", "bundle")
               and all(isinstance(r.get(key), (int, float)) for r in per_fold)] if per_fold else []
    return {
        "folds": len(results), "seed": config.seed, "epochs": config.epochs,
        "network": asdict(config.spec), "data": data, "command": command,
        "evaluated_on": "each fold's held-out test images only",
        "std": "population standard deviation over folds (ddof=0)",
        "per_fold": per_fold,
        "summary": {key: mean_std([r[key] for r in per_fold]) for key in numeric},
    }


def _number(value) -> float:
    """A metric read back from JSON: null (an undefined mean) is NaN again."""
    return math.nan if value is None else float(value)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def write_summary(output: Path, summary: dict) -> None:
    """cv_summary.json, a markdown table (cv_summary.md) and, with matplotlib, cv_summary.png."""
    write_bytes_atomically(output / f"{SUMMARY_NAME}.json",
                       json.dumps(json_safe(summary), indent=2).encode())
    write_bytes_atomically(output / f"{SUMMARY_NAME}.md", summary_table(summary).encode())
    try:
        _plot(output / f"{SUMMARY_NAME}.png", summary)
    except ImportError:
        logger.info("matplotlib not installed: no cv_summary.png")


def _format(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_table(summary: dict) -> str:
    """A markdown report: mean ± std per metric, then one row per fold."""
    labels = {"dice": "Dice (per image)", "recall": "Recall (per image)",
              "boundary_iou": "Boundary IoU",
              "assd": "ASSD (px)", "hd95": "HD95 (px)", "pooled_dice": "Dice (pooled pixels)",
              "pooled_recall": "Recall (pooled pixels)", "train_seconds": "Train time per fold (s)",
              "evaluation_seconds": "Evaluation time per fold (s)"}
    lines = [f"# {summary['folds']}-fold cross-validation (seed {summary['seed']})", "",
             f"Network: {summary['network']['architecture']} / {summary['network']['encoder']}; "
             f"data: {summary['data'].get('format', '?')} "
             f"({summary['data'].get('images', '?')} images). "
             f"Evaluated on {summary['evaluated_on']}; std = {summary['std']}.", "",
             "Distances in pixels of the network grid. Per-image means: an image without objects "
             "and without prediction counts Dice = BIoU = 1; where a metric is undefined (recall "
             "without objects, distances with an empty mask) the image is left out "
             "(xiqa.training.metrics). Pooled: pixels summed over all test images.", "",
             "| metric | mean ± std | folds |", "|---|---|---|"]
    for key, stats in summary["summary"].items():
        if key in ("test_images", "best_epoch", "epochs_run") or key.endswith("images") or \
                key.split(".")[-1] in ("pointing_hits", "pointing_misses", "pointing_excluded"):
            continue
        digits = 2 if key in ("assd", "hd95") or key.endswith("seconds") else 4
        lines.append(f"| {labels.get(key, key)} | {_format(stats['mean'], digits)} ± "
                     f"{_format(stats['std'], digits)} | {stats['n']} |")
    lines += ["", "| fold | test images | Dice | Recall | BIoU | ASSD | HD95 | best epoch |",
              "|---|---|---|---|---|---|---|---|"]
    for row in summary["per_fold"]:
        lines.append(f"| {row['fold']} | {row['test_images']} | {_format(row['dice'], 4)} | "
                     f"{_format(row['recall'], 4)} | {_format(row['boundary_iou'], 4)} | "
                     f"{_format(row['assd'], 2)} | {_format(row['hd95'], 2)} | "
                     f"{row['best_epoch']} |")
    if summary.get("command"):
        lines += ["", f"Command: `{summary['command']}`"]
    return "\n".join(lines) + "\n"


def _plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlap = ["dice", "recall", "boundary_iou"]
    distance = ["assd", "hd95"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, names, title in ((left, overlap, "overlap (higher is better)"),
                               (right, distance, "distance, px (lower is better)")):
        means = [summary["summary"].get(n, {}).get("mean", math.nan) for n in names]
        stds = [summary["summary"].get(n, {}).get("std", math.nan) for n in names]
        axis.bar(names, np.nan_to_num(means), yerr=np.nan_to_num(stds), capsize=4, color="#4c78a8")
        for fold in summary["per_fold"]:
            axis.plot(names, [fold.get(n, math.nan) for n in names], "o", color="#f58518", ms=3)
        axis.set_title(title, fontsize=9)
        if names is overlap:
            axis.set_ylim(0, 1)
    figure.suptitle(f"{summary['folds']}-fold CV, held-out images (mean ± std, dots = folds)",
                    fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes_atomically(path, buffer.getvalue())
