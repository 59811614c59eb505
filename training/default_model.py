"""Reproduce the default model shipped in ``app_package/bundles/xiqa_cxr_seg``.

A small DeepLabV3+ (MobileNetV2 encoder, 4.4 M parameters, 17.6 MB) trained on composite
radiographs: real chest radiographs without foreign bodies (``data/real_cxr``, split by
patient) with synthetic foreign objects inserted (``composite``), plus a share of the
synthetic phantoms so the fixtures keep working.  A new set of composites is drawn every
epoch from the training backgrounds; the model with the best validation Dice is kept and its
threshold calibrated on validation composites only; held-out metrics come from composites
of backgrounds never used in training or validation.  Real-data training with Object-CXR
keeps ResNet50 (``xiqa train``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from xiqa.operators.segmentation import DEFAULT_BUNDLE, NetworkSpec

from .composite import CompositeStream, backgrounds_for, composite_samples, load_manifest
from .datasets import render_phantom_samples
from .metrics import object_level_metrics
from .trainer import (
    TrainConfig,
    calibrate_threshold,
    evaluate_network,
    predict_probabilities,
    train_network,
    write_bundle,
)

REAL_CXR = Path(__file__).resolve().parent.parent / "data" / "real_cxr"
VALIDATION_SEED, HELD_OUT_SEED = 2, 3
PHANTOM_VALIDATION_SEED, PHANTOM_HELD_OUT_SEED = 12, 13


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xiqa.training.default_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: %(default)s)"
    )
    parser.add_argument(
        "--backgrounds",
        type=Path,
        default=REAL_CXR,
        help="folder with manifest.json and the real radiographs (default: %(default)s)",
    )
    parser.add_argument("--encoder", default="mobilenet_v2", help="default: %(default)s")
    parser.add_argument("--samples-per-epoch", type=int, default=800, help="default: %(default)s")
    parser.add_argument("--phantom-share", type=float, default=0.2, help="default: %(default)s")
    parser.add_argument("--validation-per-background", type=int, default=24, help="default: %(default)s")
    parser.add_argument("--held-out-per-background", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=9, help="default: %(default)s")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=42, help="default: %(default)s")
    parser.add_argument(
        "--initial-weights",
        type=Path,
        default=None,
        help="models/model.pt to continue training from (default: from scratch)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    return parser


def _pixels(backgrounds: list[tuple[str, object]]) -> list:
    return [pixels for _, pixels in backgrounds]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    train_backgrounds = backgrounds_for(args.backgrounds, "train")
    validation_backgrounds = backgrounds_for(args.backgrounds, "validation")
    held_out_backgrounds = backgrounds_for(args.backgrounds, "held_out_clean")
    logging.info(
        "backgrounds: %d train, %d validation, %d held out",
        len(train_backgrounds),
        len(validation_backgrounds),
        len(held_out_backgrounds),
    )
    validation = composite_samples(
        _pixels(validation_backgrounds), VALIDATION_SEED, args.validation_per_background
    ) + render_phantom_samples(PHANTOM_VALIDATION_SEED, 32)
    held_out = composite_samples(_pixels(held_out_backgrounds), HELD_OUT_SEED, args.held_out_per_background)
    held_out_phantoms = render_phantom_samples(PHANTOM_HELD_OUT_SEED, 64)
    train = CompositeStream(_pixels(train_backgrounds), args.samples_per_epoch, args.phantom_share)
    spec = NetworkSpec(encoder=args.encoder)
    config = TrainConfig(
        spec=spec,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        num_threads=args.threads,
        initial_weights=args.initial_weights,
    )
    network, history = train_network(train, validation, config)
    threshold, validation_dice = calibrate_threshold(network, validation)
    probabilities, labels = predict_probabilities(network, held_out)
    metrics = {
        "held_out_composites": evaluate_network(network, held_out, threshold=threshold)
        | object_level_metrics(probabilities > threshold, labels),
        "held_out_composite_images": len(held_out),
        "held_out_backgrounds": [name for name, _ in held_out_backgrounds],
        "held_out_phantoms": evaluate_network(network, held_out_phantoms, threshold=threshold),
        "threshold_validation_dice": validation_dice,
        "validation_best": max(h["dice"] for h in history),
    }
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python -m xiqa.training.default_model " + shlex.join(arguments)
    sources = sorted(
        {
            (entry["source"]["repository"], entry["source"]["commit"], entry["licence"])
            for entry in load_manifest(args.backgrounds)
        }
    )
    training = {
        "command": command.strip(),
        "data": {
            "backgrounds": str(Path(args.backgrounds).name),
            "sources": [{"repository": r, "commit": c, "licence": lic} for r, c, lic in sources],
            "train_backgrounds": [name for name, _ in train_backgrounds],
            "validation_backgrounds": [name for name, _ in validation_backgrounds],
            "phantom_share": args.phantom_share,
            "samples_per_epoch": args.samples_per_epoch,
        },
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "loss": "FocalTversky(0.7, 0.3, 0.75, 1)",
        "initial_weights": str(args.initial_weights) if args.initial_weights else None,
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
        "threads": torch.get_num_threads(),
    }
    write_bundle(
        args.output,
        network,
        spec,
        name="xiqa_cxr_seg",
        description="DeepLabV3+ trained on real chest radiographs without foreign bodies with "
        "synthetic foreign objects inserted (composites), plus synthetic phantoms",
        metrics=metrics,
        training=training,
        threshold=threshold,
    )
    logging.info("held-out composites: %s", metrics["held_out_composites"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
