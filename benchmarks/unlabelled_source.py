"""Bundles on the plates of a source that gave nothing to any of them and has no object labels.

    python benchmarks/unlabelled_source.py --images 'DIR/*.jpg' --bundle shipped=BUNDLE \\
        --bundle candidate=OTHER_BUNDLE [--output OUT --figures 8]

A source of normal frontal chests (e.g. a teaching collection's normal PA module) tells how often a
bundle rates an outpatient plate Good and how many objects it counts on it, on a hospital, scanner and
processing chain no bundle was trained or calibrated on.  Without labels a counted object is not
known to be false: ``--figures N`` draws the counted objects of the first N plates where any bundle
counts one (each bundle's outline in its own colour), to be looked at.

Each plate goes through the graph's own functions, as ``real_radiographs.py`` runs them: the gate with
the tags a modality sets (CHEST, PA), segmentation with the bundle's hysteresis, scoring over the
chest region.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_radiographs import tagged_dataset  # noqa: E402

COLOURS = [(0, 0, 255), (0, 200, 0), (255, 128, 0), (200, 0, 200)]  # BGR, one per bundle


def overlay(pixels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The plate in grey with each bundle's counted objects outlined in its colour."""
    picture = cv2.cvtColor((pixels * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for colour, mask in zip(COLOURS, masks, strict=False):
        grown = cv2.resize(mask.astype(np.uint8), pixels.shape[::-1], interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, colour, 2)
    return picture


def main(argv: list[str] | None = None) -> int:
    from xiqa.operators.gate import judge_frontal_chest
    from xiqa.operators.preprocess import to_network_input
    from xiqa.operators.scoring import Verdict, score_mask
    from xiqa.operators.segmentation import load_segmentation_model, segment
    from xiqa.training.datasets import read_raster

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", required=True, help="a glob of the source's plates (PNG/JPEG)")
    parser.add_argument("--bundle", action="append", required=True, metavar="LABEL=BUNDLE")
    parser.add_argument("--output", type=Path, default=None, help="folder for the figures")
    parser.add_argument("--figures", type=int, default=0, help="plates with counted objects to draw")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.images))
    if not paths:
        parser.error(f"no image matches {args.images}")
    bundles = dict(item.split("=", 1) for item in args.bundle)
    models = {label: load_segmentation_model(Path(path), device="cpu") for label, path in bundles.items()}
    verdicts = {label: {verdict: 0 for verdict in Verdict} for label in models}
    counted = dict.fromkeys(models, 0)
    scored, drawn = 0, 0
    for path in paths:
        pixels = read_raster(path)
        network_input = to_network_input(pixels)
        decision = judge_frontal_chest(tagged_dataset("PA"), network_input[0], source_shape=pixels.shape)
        if not decision.frontal_chest:
            print(f"not scored {Path(path).name}: {decision.reason}", file=sys.stderr)
            continue
        scored += 1
        masks = []
        for label, model in models.items():
            quality = score_mask(segment(model, network_input).mask, region=decision.region.mask)
            verdicts[label][quality.verdict] += 1
            counted[label] += len(quality.objects)
            masks.append(quality.counted_mask if quality.counted_mask is not None else np.zeros((1, 1), bool))
        if args.output is not None and drawn < args.figures and any(mask.any() for mask in masks):
            args.output.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.output / f"{Path(path).stem}.png"), overlay(pixels, masks))
            drawn += 1
    print(f"{len(paths)} plates, {scored} scored by the gate with chest PA tags")
    for index, label in enumerate(models):
        share = verdicts[label][Verdict.GOOD] / max(1, scored)
        print(f"  {label:<12} Good {verdicts[label][Verdict.GOOD]}/{scored} ({share:.0%}), "
              f"Acceptable {verdicts[label][Verdict.ACCEPTABLE]}, Poor {verdicts[label][Verdict.POOR]}, "
              f"counted objects {counted[label] / max(1, scored):.2f}/plate"
              + (f" (outline colour BGR {COLOURS[index]})" if args.figures else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
