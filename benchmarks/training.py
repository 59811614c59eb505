"""Benchmark training throughput (images/s) of the segmentation network with the MONAI trainer.

    .venv/bin/python benchmarks/training.py [--encoders mobilenet_v2 resnet50]
        [--image-size 256] [--batch-size 16] [--iterations 3] [--warmup 1]
        [--threads N] [--device auto|cpu|cuda] [--json OUT]

For each encoder (DeepLabV3+; MobileNetV2 is the shipped default model,
ResNet50 the method's architecture) it runs the real training step of
``xiqa train``: ``SupervisedTrainer`` with the Focal Tversky loss, Adam and
the training augmentation, on in-memory phantoms already on the network grid
(decoding files is not timed: ``xiqa train`` decodes each image once before
the folds).  The first ``--warmup`` iterations are not timed.  It reports
images/s, seconds per iteration, and what that means for one epoch of a
fold of Object-CXR's 8,000 training images (5-fold CV of 10,000 images).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

OBJECT_CXR_FOLD_TRAIN_IMAGES = 8000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["mobilenet_v2", "resnet50"],
                        help="DeepLabV3+ encoders (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    parser.add_argument("--iterations", type=int, default=3, help="timed (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="default: %(default)s")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    return parser


def measure(encoder: str, args: argparse.Namespace, samples: list[dict]) -> dict:
    """One encoder: timed iterations of SupervisedTrainer (data, augmentation, step)."""
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism
    from xiqa.operators.segmentation import NetworkSpec, build_network, pick_device
    from xiqa.training.datasets import training_transforms
    from xiqa.training.losses import FocalTverskyLoss

    set_determinism(seed=0)
    device = pick_device(args.device)
    network = build_network(NetworkSpec(encoder=encoder)).to(device)
    loader = DataLoader(Dataset(samples, transform=training_transforms(3, True, args.image_size)),
                        batch_size=args.batch_size, shuffle=True, num_workers=0, drop_last=True)
    total = args.warmup + args.iterations
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, epoch_length=total, train_data_loader=loader, network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-4),
        loss_function=FocalTverskyLoss())
    stamps: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stamp(engine) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    trainer.run()
    timed = stamps[args.warmup - 1:] if args.warmup else [started, *stamps]
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
    images_per_second = args.batch_size / seconds
    return {
        "encoder": encoder, "parameters": sum(p.numel() for p in network.parameters()),
        "device": str(device), "image_size": args.image_size, "batch_size": args.batch_size,
        "timed_iterations": len(timed) - 1, "seconds_per_iteration": round(seconds, 3),
        "images_per_second": round(images_per_second, 2),
        "object_cxr_fold_epoch_minutes":
            round(OBJECT_CXR_FOLD_TRAIN_IMAGES / images_per_second / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from xiqa.training.datasets import list_rendered, prepare_samples

    count = args.batch_size * (args.warmup + args.iterations)
    # Small sources (256-384 px) keep rendering quick; the network grid is --image-size anyway.
    samples, _ = prepare_samples(list_rendered(count, seed=0, sizes=(256, 384)).items,
                                 size=args.image_size)
    results = []
    for encoder in args.encoders:
        result = measure(encoder, args, samples)
        results.append(result)
        print(f"{encoder:>14}: {result['images_per_second']:7.2f} images/s  "
              f"{result['seconds_per_iteration']:6.2f} s/iteration (batch {args.batch_size}, "
              f"{args.image_size}x{args.image_size}, {result['device']}, "
              f"{torch.get_num_threads()} threads)  "
              f"-> {result['object_cxr_fold_epoch_minutes']} min per Object-CXR fold epoch",
              flush=True)
    arguments = sys.argv[1:] if argv is None else argv
    report = {"command": "python benchmarks/training.py " + " ".join(arguments),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "platform": platform.platform(), "processor": platform.processor(),
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
