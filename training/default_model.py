"""Reproduce the default model shipped in ``app_package/bundles/xiqa_phantom_seg``.

A small DeepLabV3+ (MobileNetV2 encoder, 4.4 M parameters, 17.6 MB) trained on
synthetic phantoms so that the whole graph runs on a fresh machine with no
download.  Training, validation and held-out test images come from disjoint
seeds.  Real-data training keeps ResNet50 (``xiqa train``).
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

from .datasets import render_phantom_samples
from .trainer import TrainConfig, calibrate_threshold, evaluate_network, train_network, write_bundle

TRAIN_SEED, VALIDATION_SEED, HELD_OUT_SEED = 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xiqa.training.default_model",
                                     description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_BUNDLE,
                        help="bundle folder (default: %(default)s)")
    parser.add_argument("--encoder", default="mobilenet_v2", help="default: %(default)s")
    parser.add_argument("--train-count", type=int, default=640, help="default: %(default)s")
    parser.add_argument("--validation-count", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--held-out-count", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=14, help="default: %(default)s")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=42, help="default: %(default)s")
    parser.add_argument("--initial-weights", type=Path, default=None,
                        help="models/model.pt to continue training from (default: from scratch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    train = render_phantom_samples(TRAIN_SEED, args.train_count)
    validation = render_phantom_samples(VALIDATION_SEED, args.validation_count)
    held_out = render_phantom_samples(HELD_OUT_SEED, args.held_out_count)
    spec = NetworkSpec(encoder=args.encoder)
    config = TrainConfig(spec=spec, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed,
                         num_threads=args.threads, initial_weights=args.initial_weights)
    network, history = train_network(train, validation, config)
    threshold, validation_dice = calibrate_threshold(network, validation)
    metrics = {"held_out": evaluate_network(network, held_out, threshold=threshold),
               "held_out_at_0.5": evaluate_network(network, held_out), "held_out_images": len(held_out),
               "threshold_validation_dice": validation_dice,
               "held_out_seed": HELD_OUT_SEED, "validation_best": max(h["dice"] for h in history)}
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python -m xiqa.training.default_model " + shlex.join(arguments)
    training = {"command": command.strip(), "train_seed": TRAIN_SEED,
                "validation_seed": VALIDATION_SEED,
                "train_images": len(train), "epochs": args.epochs, "batch_size": args.batch_size,
                "learning_rate": args.learning_rate, "loss": "FocalTversky(0.7, 0.3, 0.75, 1)",
                "seconds": round(time.perf_counter() - started, 1), "history": history,
                "threads": torch.get_num_threads()}
    write_bundle(args.output, network, spec, name="xiqa_phantom_seg",
                 description="DeepLabV3+ trained on xiqa synthetic chest phantoms "
                             "(not real patients)",
                 metrics=metrics, training=training, threshold=threshold)
    logging.info("held-out dice %.4f recall %.4f", metrics["held_out"]["dice"],
                 metrics["held_out"]["recall"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
