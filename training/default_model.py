"""Reproduce the default model shipped in ``app_package/bundles/xiqa_cxr_seg``.

A small DeepLabV3+ (MobileNetV2 encoder, 4.4 M parameters, 17.6 MB) trained on composite
radiographs: real chest radiographs without foreign bodies (``data/real_cxr``, split by
patient) with synthetic foreign objects inserted (``composite``), plus a share of the
synthetic phantoms so the fixtures keep working.  A new set of composites is drawn every
epoch from the training backgrounds; the model with the best validation Dice is kept and its
mask parameters (threshold, hysteresis seed, sure area) calibrated on validation composites only;
held-out metrics come from composites of backgrounds never used in training or validation.
``--calibrate BUNDLE`` redoes only that last step on a trained bundle, in place.  Real-data
training with Object-CXR keeps ResNet50 (``xiqa train``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from xiqa.operators.segmentation import (
    DEFAULT_BUNDLE,
    NetworkSpec,
    hysteresis_masks,
    load_segmentation_model,
    read_metadata,
)

from .composite import (
    CompositeStream,
    backgrounds_for,
    composite_samples,
    load_manifest,
    plate_as_is_sample,
)
from .corpus import SOURCES, CorpusImage, load_corpus, training_sources_split
from .datasets import read_raster, render_phantom_samples
from .metrics import json_safe, object_level_metrics, pooled_dice_recall
from .operating_point import chest_regions, choose_operating_point
from .real_objects import RealObject, extract_real_objects, plate_mask
from .trainer import (
    Calibration,
    TrainConfig,
    calibrate,
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
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="a labelled real-radiograph corpus (scripts/import_real_cxr.py --corpus): its clean frontal "
        "plates of --train-sources are the backgrounds (split by patient into train/validation), their "
        "labelled devices are pasted onto them, and the other sources' clean plates are held out",
    )
    parser.add_argument(
        "--train-sources",
        default="nih,hannover",
        help="corpus sources that may give anything to training or calibration (default: %(default)s)",
    )
    parser.add_argument(
        "--real-plate-share",
        type=float,
        default=0.0,
        help="with --corpus: share of training samples that are the labelled training plates "
        "themselves, their own devices the label (default: %(default)s)",
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
    parser.add_argument(
        "--max-false-objects",
        type=float,
        default=None,
        metavar="PER_IMAGE",
        help="calibrate as the product counts objects (training.operating_point): the most labelled "
        "objects found over the chest while the validation images get at most this many false objects "
        "over the chest (default: the Dice threshold, then seed and sure area by object cost)",
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="do not train: calibrate the thresholds of this trained bundle again and rewrite its "
        "metadata (threshold, seed threshold, sure area, held-out figures) in place",
    )
    return parser


def lineage_of(initial_weights: Path | None) -> list[dict]:
    """The training records of the bundle ``initial_weights`` came from, and of its ancestors."""
    if initial_weights is None:
        return []
    bundle = Path(initial_weights).resolve().parent.parent
    if not (bundle / "configs" / "metadata.json").exists():
        return [{"weights": str(initial_weights), "record": "no bundle metadata beside the weights"}]
    metadata = read_metadata(bundle)
    training = metadata.get("xiqa", {}).get("training", {})
    ancestor = {key: value for key, value in training.items() if key not in ("history", "lineage")}
    return [{"name": metadata.get("name"), "version": metadata.get("version"), **ancestor}] + training.get(
        "lineage", []
    )


def _pixels(backgrounds: list[tuple[str, object]]) -> list:
    return [pixels for _, pixels in backgrounds]


def calibrated_figures(network: torch.nn.Module, calibration: Calibration, samples: list[dict]) -> dict:
    """Pooled Dice/recall and object-level figures of the calibrated masks over ``samples``."""
    probabilities, labels = predict_probabilities(network, samples)
    masks = hysteresis_masks(
        probabilities, calibration.threshold, calibration.seed_threshold, calibration.sure_area
    )
    return pooled_dice_recall(masks, labels) | object_level_metrics(masks, labels)


class LabelledDevices(NamedTuple):
    """The devices cut from a split's labelled plates, and those plates with their devices' mask."""

    objects: list[RealObject]
    plates: list[tuple[np.ndarray, np.ndarray]]  # (pixels, mask) of each plate with a device found


def corpus_backgrounds(args: argparse.Namespace) -> tuple[dict, dict[str, LabelledDevices]]:
    """Backgrounds by split from a labelled corpus, and its labelled plates' devices by split.

    Only ``--train-sources`` give anything: clean plates of their training patients are
    backgrounds, and their validation patients' clean plates calibrate.  The devices labelled on
    their training (validation) patients' plates are pasted onto training (validation)
    composites, and the plates themselves with their devices' masks are real training samples
    (validation samples, as the app sees them), so calibration sees real devices in their real
    context.  Held-out composites come from the clean plates of the other sources.
    """
    # the patients of data/real_cxr's held-out splits stay unseen by every model, so the shipped
    # model's tests and xiqa demo's plates are never training plates
    kept_apart = {
        entry["group"] for entry in load_manifest(REAL_CXR) if entry["split"].startswith("held_out")
    }
    images = [image for image in load_corpus(args.corpus) if image.group not in kept_apart]
    sources = set(args.train_sources.split(","))
    train, validation = training_sources_split(images, sources)
    held_out = [i for i in images if i.source not in sources and i.view == "frontal" and i.clean]

    def pixels_of(chosen: list[CorpusImage]) -> list[tuple[str, object]]:
        return [(image.id, read_raster(args.corpus / image.file)) for image in chosen]

    def devices_of(chosen: list[CorpusImage]) -> LabelledDevices:
        library, plates = [], []
        for image in chosen:
            if image.objects:
                pixels = read_raster(args.corpus / image.file)
                found = extract_real_objects(image, pixels)
                library += found
                if found:
                    plates.append((pixels, plate_mask(found, pixels.shape)))
        return LabelledDevices(library, plates)

    libraries = {"train": devices_of(train), "validation": devices_of(validation)}
    logging.info(
        "real devices to paste: %d from %d training plates, %d from %d validation plates",
        len(libraries["train"].objects),
        len(libraries["train"].plates),
        len(libraries["validation"].objects),
        len(libraries["validation"].plates),
    )
    return {
        "train": pixels_of([i for i in train if i.clean]),
        "validation": pixels_of([i for i in validation if i.clean]),
        "held_out_clean": pixels_of(held_out),
    }, libraries


def evaluation_sets(args: argparse.Namespace) -> dict:
    """Backgrounds by split and the fixed validation and held-out sets (composites and phantoms)."""
    if args.corpus is not None:
        backgrounds, libraries = corpus_backgrounds(args)
    else:
        libraries = {"train": LabelledDevices([], []), "validation": LabelledDevices([], [])}
        backgrounds = {
            split: backgrounds_for(args.backgrounds, split)
            for split in ("train", "validation", "held_out_clean")
        }
    logging.info(
        "backgrounds: %d train, %d validation, %d held out",
        *(len(backgrounds[split]) for split in ("train", "validation", "held_out_clean")),
    )
    # the validation patients' real plates as the app sees them: devices in context, and the
    # clean plates' own clutter as false objects
    real_validation = [plate_as_is_sample(pixels, mask) for pixels, mask in libraries["validation"].plates]
    if args.corpus is not None:
        real_validation += [
            plate_as_is_sample(pixels, np.zeros(pixels.shape, bool))
            for pixels in _pixels(backgrounds["validation"])
        ]
    validation_real = (
        composite_samples(
            _pixels(backgrounds["validation"]),
            VALIDATION_SEED,
            args.validation_per_background,
            real_objects=libraries["validation"].objects,
        )
        + real_validation
    )
    return {
        "backgrounds": backgrounds,
        "real_objects": libraries["train"].objects,
        "real_plates": libraries["train"].plates,
        "validation_real": validation_real,
        "validation": validation_real + render_phantom_samples(PHANTOM_VALIDATION_SEED, 32),
        "held_out": composite_samples(
            _pixels(backgrounds["held_out_clean"]), HELD_OUT_SEED, args.held_out_per_background
        ),
        "held_out_phantoms": render_phantom_samples(PHANTOM_HELD_OUT_SEED, 64),
    }


def calibrate_on_chest(
    network: torch.nn.Module, samples: list[dict], max_false_per_image: float
) -> tuple[Calibration, dict]:
    """``operating_point.choose_operating_point`` on real-background validation ``samples``."""
    probabilities, labels = predict_probabilities(network, samples)
    regions = chest_regions(np.stack([sample["image"][0] for sample in samples]))
    # a real plate's own labels miss faint leads: its unlabelled objects are not counted as false
    labels_complete = np.array([sample["kinds"] != ["real_plate"] for sample in samples])
    kept, tried = choose_operating_point(probabilities, labels, regions, max_false_per_image, labels_complete)
    return Calibration(kept.threshold, kept.seed_threshold, kept.sure_area, {}, {}, {}), {
        "operating_point": {
            "max_false_objects_per_image": max_false_per_image,
            "validation_images": len(samples),
            "images_judged_for_false_objects": int(labels_complete.sum()),
            "kept": asdict(kept),
            "tried": [asdict(point) for point in tried],
        }
    }


def calibration_metrics(
    network: torch.nn.Module, sets: dict, max_false_per_image: float | None = None
) -> tuple[Calibration, dict]:
    if max_false_per_image is None:
        calibration, chosen = calibrate(network, sets["validation"]), {}
    else:
        calibration, chosen = calibrate_on_chest(network, sets["validation_real"], max_false_per_image)
    logging.info(
        "calibrated on validation: threshold %s, seed threshold %s, sure area %s",
        calibration.threshold,
        calibration.seed_threshold,
        calibration.sure_area,
    )
    held_out = (
        {"held_out_composites": calibrated_figures(network, calibration, sets["held_out"])}
        if sets["held_out"]  # a model trained on every source has no held-out backgrounds
        else {}
    )
    return calibration, chosen | held_out | {
        "held_out_composite_images": len(sets["held_out"]),
        "held_out_backgrounds": [name for name, _ in sets["backgrounds"]["held_out_clean"]],
        "held_out_phantoms": calibrated_figures(network, calibration, sets["held_out_phantoms"]),
        "threshold_validation_dice": calibration.dice_per_threshold,
        "seed_validation_object_cost": calibration.object_cost_per_seed,
        "sure_area_validation_object_cost": calibration.object_cost_per_sure_area,
    }


def recalibrate(bundle: Path, sets: dict, command: str, max_false_per_image: float | None) -> None:
    """Calibrate a trained bundle again (e.g. after the calibration method changed), in place."""
    network = load_segmentation_model(bundle, device="cpu").networks[0]
    calibration, metrics = calibration_metrics(network, sets, max_false_per_image)
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = read_metadata(bundle)
    xiqa = metadata["xiqa"]
    xiqa.update(
        threshold=calibration.threshold,
        seed_threshold=calibration.seed_threshold,
        sure_area=calibration.sure_area,
    )
    xiqa["metrics"].update(json_safe(metrics))
    xiqa["training"]["calibrated_again"] = {"command": command, "date": time.strftime("%Y-%m-%d")}
    metadata_path.write_text(json.dumps(metadata, indent=2))
    logging.info("held-out composites: %s", metrics.get("held_out_composites"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    arguments = argv if argv is not None else sys.argv[1:]
    command = ("python -m xiqa.training.default_model " + shlex.join(arguments)).strip()
    sets = evaluation_sets(args)
    if args.calibrate is not None:
        recalibrate(args.calibrate, sets, command, args.max_false_objects)
        return 0
    backgrounds = sets["backgrounds"]
    train = CompositeStream(
        _pixels(backgrounds["train"]),
        args.samples_per_epoch,
        args.phantom_share,
        real_objects=sets["real_objects"],
        real_plates=sets["real_plates"],
        real_plate_share=args.real_plate_share,
    )
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
    network, history = train_network(train, sets["validation"], config)
    calibration, metrics = calibration_metrics(network, sets, args.max_false_objects)
    metrics["validation_best"] = max(h["dice"] for h in history)
    if args.corpus is not None:
        sources = sorted(
            (SOURCES[key].repository, SOURCES[key].commit, SOURCES[key].licence)
            for key in args.train_sources.split(",")
        )
    else:
        sources = sorted(
            {
                (entry["source"]["repository"], entry["source"]["commit"], entry["licence"])
                for entry in load_manifest(args.backgrounds)
            }
        )
    training = {
        "command": command,
        "data": {
            "backgrounds": str(Path(args.corpus or args.backgrounds).name),
            "train_sources": args.train_sources.split(",") if args.corpus is not None else None,
            "real_objects_pasted": len(sets["real_objects"]),
            "real_plates": len(sets["real_plates"]),
            "real_plate_share": args.real_plate_share,
            "sources": [{"repository": r, "commit": c, "licence": lic} for r, c, lic in sources],
            "train_backgrounds": [name for name, _ in backgrounds["train"]],
            "validation_backgrounds": [name for name, _ in backgrounds["validation"]],
            "phantom_share": args.phantom_share,
            "samples_per_epoch": args.samples_per_epoch,
        },
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "loss": "FocalTversky(0.7, 0.3, 0.75, 1)",
        "initial_weights": str(args.initial_weights) if args.initial_weights else None,
        "lineage": lineage_of(args.initial_weights),
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
        threshold=calibration.threshold,
        seed_threshold=calibration.seed_threshold,
        sure_area=calibration.sure_area,
    )
    logging.info("held-out composites: %s", metrics.get("held_out_composites"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
