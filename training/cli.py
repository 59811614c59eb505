"""``xiqa train``: K-fold cross-validation of the segmentation network, one MONAI bundle per fold.

Examples::

    xiqa train --data /data/object-cxr/train.csv --format objectcxr --output runs/ocxr
    xiqa train --data fixtures/ --format synthetic --folds 5 --epochs 50 --output runs/phantoms
    xiqa train --format synthetic --render 400 --output runs/rendered --encoder mobilenet_v2
    xiqa train --data pacs_export/ --format dicom --output runs/dicom

Run the same command again after an interruption: it resumes from the last
checkpoint (folds already finished are kept).  The same seed, data and
settings give the same splits and, on CPU, bitwise the same weights.

Exit status: 0 done; 1 the data gave no usable images or training failed;
2 usage error, including an ``--output`` that holds a run with other settings.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

logger = logging.getLogger("xiqa.training")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _sizes(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    if not 64 <= low <= high:
        raise argparse.ArgumentTypeError(f"need 64 <= MIN <= MAX, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xiqa train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    data = parser.add_argument_group("Data")
    data.add_argument("--data", type=Path,
                      help="objectcxr: the annotation CSV or its folder; synthetic: a folder "
                           "written by `xiqa fixtures`; dicom: a folder of radiographs and SEG "
                           "instances")
    data.add_argument("--format", required=True, choices=("objectcxr", "synthetic", "dicom"),
                      help="kind of --data")
    data.add_argument("--images", type=Path,
                      help="objectcxr: image folder (default: the folder named like the CSV, "
                           "images/, or the CSV's folder)")
    data.add_argument("--synthetic-images", choices=("dicom", "jpeg"), default="dicom",
                      help="synthetic: read the DICOM instances or the JPEG copies "
                           "(default: %(default)s)")
    data.add_argument("--render", type=_positive, metavar="COUNT",
                      help="synthetic: render COUNT phantoms on the fly instead of reading --data")
    data.add_argument("--render-sizes", type=_sizes, default=(384, 768), metavar="MIN,MAX",
                      help="synthetic --render: source image sizes (default: 384,768)")
    data.add_argument("--missing-seg", choices=("skip", "empty"), default="skip",
                      help="dicom: a radiograph no SEG references is skipped or has no object "
                           "(default: %(default)s)")

    training = parser.add_argument_group("Training")
    training.add_argument("--output", type=Path, required=True,
                          help="run folder: bundles/fold_K, checkpoints, splits, cv_summary.*")
    training.add_argument("--folds", type=int, default=5, help="K (default: %(default)s)")
    training.add_argument("--epochs", type=_positive, default=50,
                          help="per fold (default: %(default)s)")
    training.add_argument("--batch-size", type=_positive, default=16, help="default: %(default)s")
    training.add_argument("--learning-rate", type=float, default=1e-4,
                          help="Adam (default: %(default)s)")
    training.add_argument("--architecture", default="DeepLabV3Plus",
                          help="segmentation-models-pytorch class (default: %(default)s)")
    training.add_argument("--encoder", default="resnet50",
                          help="encoder, e.g. resnet50 or mobilenet_v2 (default: %(default)s)")
    training.add_argument("--image-size", type=_positive, default=256,
                          help="network grid, a multiple of 16 (default: %(default)s, as the app)")
    training.add_argument("--validation-fraction", type=_fraction, default=0.1,
                          help="share of each fold's training images used to pick the best "
                               "epoch; 0 selects on the training images (default: %(default)s)")
    training.add_argument("--patience", type=_non_negative, default=0,
                          help="early stopping after N epochs without validation gain; 0 = off "
                               "(default: %(default)s)")
    training.add_argument("--no-augment", action="store_true", help="train without augmentation")
    training.add_argument("--seed", type=int, default=42,
                          help="splits, initialisation, order, augmentation (default: %(default)s)")

    evaluation = parser.add_argument_group("Evaluation")
    evaluation.add_argument("--no-explanations", action="store_true",
                            help="skip the explanation metrics on held-out images")
    evaluation.add_argument("--explanation-methods", nargs="+", metavar="METHOD",
                            choices=("gradcam", "normgrad0", "normgrad1"),
                            default=["gradcam", "normgrad0", "normgrad1"],
                            help="saliency methods to score (default: gradcam normgrad0 normgrad1)")
    evaluation.add_argument("--explanation-images", type=_positive, default=16,
                            help="held-out images with objects per fold for explanation metrics "
                                 "(default: %(default)s)")

    runtime = parser.add_argument_group("Runtime (may change between restarts)")
    runtime.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="default: %(default)s (cuda when available)")
    runtime.add_argument("--workers", type=_non_negative, default=0,
                         help="data-loader worker processes, and threads that decode the "
                              "images once at the start (default: %(default)s)")
    runtime.add_argument("--threads", type=_positive,
                         help="torch CPU threads (default: torch's choice)")
    runtime.add_argument("--keep-checkpoints", action="store_true",
                         help="keep work/fold_K/checkpoint.pt after the fold's bundle is written")
    runtime.add_argument("--no-progress", action="store_true", help="no progress bars")
    verbosity = runtime.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("xiqa").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run ``xiqa train``; returns the exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 2 on usage errors and 0 on --help
        return int(stop.code or 0)
    package_logger = logging.getLogger("xiqa")
    previous_level = package_logger.level
    _setup_logging(args)
    try:
        return _run(parser, args, argv)
    finally:  # a caller (a test, the xiqa CLI) keeps its own logging setup
        package_logger.setLevel(previous_level)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace,
         argv: list[str] | None) -> int:
    if args.render and args.format != "synthetic":
        parser.print_usage(sys.stderr)
        print("xiqa train: error: --render needs --format synthetic", file=sys.stderr)
        return EXIT_USAGE
    if args.data is None and not args.render:
        parser.print_usage(sys.stderr)
        print("xiqa train: error: --data is required (or --format synthetic --render COUNT)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.image_size % 16:
        print(f"xiqa train: error: --image-size must be a multiple of 16, got {args.image_size}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.folds < 2:
        print(f"xiqa train: error: --folds must be at least 2, got {args.folds}", file=sys.stderr)
        return EXIT_USAGE

    from xiqa.operators.segmentation import NetworkSpec

    from .crossval import CrossValConfig, ResumeMismatch, run_cross_validation
    from .datasets import list_source, prepare_samples

    command = "xiqa train " + shlex.join(argv if argv is not None else sys.argv[1:])
    config = CrossValConfig(
        spec=NetworkSpec(architecture=args.architecture, encoder=args.encoder),
        folds=args.folds, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, image_size=args.image_size,
        validation_fraction=args.validation_fraction, patience=args.patience,
        augment=not args.no_augment, explanations=not args.no_explanations,
        explanation_images=args.explanation_images,
        explanation_methods=tuple(args.explanation_methods), device=args.device,
        workers=args.workers, threads=args.threads, progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints)
    # Effective configuration, free of patient data (paths are the user's own folders).
    logger.info("xiqa train: %s", config.to_dict())
    try:
        listing = list_source(args.data, args.format, images=args.images,
                              synthetic_images=args.synthetic_images, render=args.render,
                              render_sizes=args.render_sizes, seed=args.seed,
                              missing_seg=args.missing_seg)
    except (FileNotFoundError, ValueError) as error:
        print(f"xiqa train: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for problem in listing.problems:
        logger.warning("skipped %s", problem)
    samples, load_problems = prepare_samples(
        listing.items, args.image_size, progress=config.progress, workers=args.workers,
        on_problem=lambda problem: logger.warning("skipped %s", problem))
    problems = listing.problems + load_problems
    logger.info("%d usable images (%d with objects), %d skipped", len(samples),
                sum(bool(s["label"].any()) for s in samples), len(problems))
    if len(samples) < args.folds:
        print(f"xiqa train: error: {len(samples)} usable images, fewer than --folds {args.folds}",
              file=sys.stderr)
        return EXIT_FAILED
    data = {"format": args.format, "source": args.data.name if args.data else "rendered",
            "images": len(samples), "skipped": len(problems),
            "images_with_objects": sum(bool(s["label"].any()) for s in samples)}
    if args.render:
        data.update({"rendered": args.render, "render_sizes": list(args.render_sizes)})
    try:
        summary = run_cross_validation(samples, args.output, config, data=data, command=command,
                                       bundle_name=f"xiqa_{args.format}_seg", problems=problems)
    except ResumeMismatch as error:
        print(f"xiqa train: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    stats = summary["summary"]
    logger.info("cross-validation done: dice %.4f ± %.4f, recall %.4f ± %.4f; bundles in %s",
                stats["dice"]["mean"], stats["dice"]["std"], stats["recall"]["mean"],
                stats["recall"]["std"], args.output / "bundles")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
