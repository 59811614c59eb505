"""How segmentation bundles fare on real chest radiographs, per source, on cross-source folds.

    python benchmarks/real_radiographs.py --corpus DIR --output OUT \\
        --fold nih=BUNDLE_TRAINED_WITHOUT_NIH --fold hannover=BUNDLE_TRAINED_WITHOUT_HANNOVER \\
        [--before OLD_BUNDLE] [--shipped BUNDLE] [--figures 2] \\
        [--classifier-fold nih=NPZ_TRAINED_WITHOUT_NIH --classifier-fold hannover=...]

DIR is the labelled corpus (``scripts/import_real_cxr.py --corpus``, labels in
``data/real_labels``).  A figure is held out only when the bundle that made it was trained
without the plate's source, so each source is measured with its own fold's bundle ("after").
``--before`` (the previous shipped model) and ``--shipped`` (trained on every source, so not
held out anywhere) are measured on the same plates in the same run, for comparison.

Per source and bundle, every frontal plate goes through the graph's own functions (gate with the
tags a modality sets, segmentation with the bundle's hysteresis, scoring over the chest region;
Q_img does not depend on the saliency map, so it is left out here), and the run prints:

- the gate: frontal chests scored with tags (Body Part CHEST, View Position) and without tags;
- image-level AUC of 1 - Q_img, plates with a labelled object over the chest vs clean plates;
- plates with an object over the chest that get at least one counted object;
- per category, labelled objects over the chest that a counted object touches (hit rate);
- clean plates rated Good and counted (false) objects per clean plate.

With ``--classifier-fold SOURCE=NPZ`` (the object classifier trained without SOURCE,
``python -m xiqa.training.object_classes --write-folds DIR``) the counted objects of SOURCE's plates
are classed as the graph classes them (the ECG rule by the plate's projection) and it also prints:

- the class confusion table (removable / device) of counted objects that hit a labelled object
  (the label whose band the object overlaps most; "other" labels and objects that hit no label
  are counted apart), and the class accuracy per labelled category;
- the issue's plate goals (``xiqa.training.object_classes.tally_plate_goals``): AP plates with
  devices only rated Good or Acceptable and listing a device, plates with a removable object over
  the chest rated Poor or Acceptable.

``--figures N`` runs N ICU and N clean plates per source through the whole graph (DICOM in,
SEG/SC/SR/report.png out) with the fold's bundle and copies their report.png to OUT/figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GRID = 256
logger = logging.getLogger("real_radiographs")


@dataclass(frozen=True)
class PlateResult:
    image_id: str
    scored_with_tags: bool
    scored_without_tags: bool
    region_estimated: bool
    gate_reason: str | None
    q_img: float | None
    peak_probability: float | None  # over the chest region
    verdict: str | None
    counted_objects: int
    labelled_over_chest: int
    category_hits: tuple[tuple[str, bool], ...]  # per labelled object over the chest
    # with a classifier (--classifier-fold): per counted object (the labelled category it hits most,
    # "" for none; the predicted class), and the plate goals this plate counts towards
    object_classes: tuple[tuple[str, str], ...] = ()
    plate_goals: dict | None = None


def tagged_dataset(projection: str):
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.BodyPartExamined = "CHEST"
    if projection in ("AP", "PA"):
        dataset.ViewPosition = projection
    return dataset


def segmentation_mask(model, segmentation_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's mask on the analysis grid, and its probability map on the segmentation grid.
    A finer ``segmentation_input`` (``--grid``) is segmented at its own size, its hysteresis redone
    with the sure area scaled to keep its physical size, and brought back to the grid by "any
    pixel", so a thin line found on the finer grid stays found."""
    from xiqa.operators.segmentation import hysteresis_mask, segment

    segmentation = segment(model, segmentation_input)
    size = segmentation_input.shape[-1]
    if size == GRID:
        return segmentation.mask, segmentation.probability
    sure_area = None if model.sure_area is None else round(model.sure_area * (size / GRID) ** 2)
    fine, _ = hysteresis_mask(segmentation.probability, model.threshold, model.seed_threshold, sure_area)
    coarse = cv2.resize(fine.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)
    return (coarse > 0).astype(np.uint8), segmentation.probability


def peak_over_chest(probability: np.ndarray, region: np.ndarray) -> float:
    """The highest object probability over the chest region: an image-level score (Object-CXR
    ranks its plates by the surest box) that no mask threshold has cut."""
    if region.shape != probability.shape:
        region = cv2.resize(region.astype(np.uint8), probability.shape[::-1], interpolation=cv2.INTER_NEAREST)
    inside = probability[region > 0]
    return float(inside.max()) if inside.size else 0.0


def measure_plate(
    model, image, segmentation_input: np.ndarray, tagged, untagged, pixels_shape,
    classifier=None, grid_image: np.ndarray | None = None,
) -> PlateResult:
    """One bundle on one plate, given the gate's decisions with and without tags (the same for every
    bundle, so they are made once per plate).  With ``classifier`` (one that never saw the plate's
    source) the counted objects are classed on ``grid_image`` as the graph classes them, each
    matched to the labelled object it overlaps most, and the plate tallied for the issue's goals."""
    from xiqa.operators.scoring import ScoringConfig, score_mask

    over_chest = image.objects_over_chest
    if not tagged.frontal_chest:
        return PlateResult(
            image.id, False, untagged.frontal_chest, False, tagged.reason, None, None, None, 0,
            len(over_chest), (),
        )
    config = ScoringConfig()
    mask, probability = segmentation_mask(model, segmentation_input)
    quality = score_mask(mask, None, config, tagged.region.mask)
    counted = quality.counted_mask
    bands = [label_grid_band(obj, pixels_shape) for obj in image.objects]
    # counted as scoring counts: one of the objects over the chest touches the label
    hits = [(obj.category, bool((counted & band).any()))
            for obj, band in zip(image.objects, bands, strict=True) if obj.inside_chest]
    classes, goals = (), None
    if classifier is not None:  # a plate with nothing counted still counts for the plate goals
        classes, goals = classify_plate(quality, image, bands, classifier, tagged.region.mask, grid_image)
    return PlateResult(
        image.id,
        True,
        untagged.frontal_chest,
        tagged.region.estimated,
        None,
        quality.q_img,
        peak_over_chest(probability, tagged.region.mask),
        quality.verdict.value,
        len(quality.objects),
        len(over_chest),
        tuple(hits),
        classes,
        goals,
    )


def label_grid_band(obj, pixels_shape: tuple[int, int]) -> np.ndarray:
    """The band around a labelled object (``label_band``) on the 256 x 256 analysis grid."""
    from xiqa.training.real_objects import label_band

    factor = GRID / max(pixels_shape)
    grid_shape = (round(pixels_shape[0] * factor), round(pixels_shape[1] * factor))
    band = label_band(obj.scaled(factor), grid_shape)
    return cv2.resize(band.astype(np.uint8), (GRID, GRID), interpolation=cv2.INTER_NEAREST) > 0


def classify_plate(quality, image, bands: list[np.ndarray], classifier, region: np.ndarray,
                   grid_image: np.ndarray) -> tuple[tuple[tuple[str, str], ...], dict]:
    """(per counted object: the labelled category it overlaps most or "", its predicted class;
    the plate's tallies towards the issue's goals) with the graph's own classification."""
    from xiqa.operators.object_classes import classify_quality
    from xiqa.operators.scoring import object_masks
    from xiqa.training.object_classes import tally_plate_goals

    view = image.projection if image.projection in ("AP", "PA") else ""
    classified = classify_quality(quality, grid_image, region, classifier, view_position=view)
    classes = []
    for finding, mask in zip(classified.objects, object_masks(classified), strict=True):
        overlaps = [int((mask & band).sum()) for band in bands]
        best = int(np.argmax(overlaps)) if overlaps and max(overlaps) > 0 else None
        classes.append((image.objects[best].category if best is not None else "", finding.object_class))
    known = [o for o in image.objects if o.category != "other"]
    tallies: dict[str, list[int]] = {}
    if known:
        tally_plate_goals(tallies, [o.category for o in known], image.projection,
                          [o.inside_chest for o in known], classified)
    return tuple(classes), tallies


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """Mann-Whitney AUC (ties count half)."""
    if not positives or not negatives:
        return None
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def summarise(results: list[PlateResult], images: dict) -> dict:
    scored = [r for r in results if r.scored_with_tags]
    device_plates = [r for r in scored if r.labelled_over_chest]
    clean = [r for r in scored if images[r.image_id].clean]
    categories: dict[str, list[int]] = {}
    for r in scored:
        for category, hit in r.category_hits:
            categories.setdefault(category, [0, 0])
            categories[category][0] += hit
            categories[category][1] += 1
    return {
        "frontal_plates": len(results),
        "scored_with_tags": len(scored),
        "scored_without_tags": sum(r.scored_without_tags for r in results),
        "region_estimated": sum(r.region_estimated for r in scored),
        "refused": [(r.image_id, r.gate_reason) for r in results if not r.scored_with_tags],
        "auc": auc([1 - r.q_img for r in device_plates], [1 - r.q_img for r in clean]),
        "auc_peak_probability": auc(
            [r.peak_probability for r in device_plates], [r.peak_probability for r in clean]
        ),
        "device_plates": len(device_plates),
        "device_plates_with_counted_object": sum(r.counted_objects > 0 for r in device_plates),
        "clean_plates": len(clean),
        "clean_good": sum(r.verdict == "Good" for r in clean),
        "false_objects_per_clean_plate": float(np.mean([r.counted_objects for r in clean]))
        if clean
        else None,
        "categories": {c: {"hit": h, "labelled": n} for c, (h, n) in sorted(categories.items())},
        **({"classes": summarise_classes(scored)} if any(r.plate_goals is not None for r in scored) else {}),
    }


def summarise_classes(scored: list[PlateResult]) -> dict:
    """The class confusion table of counted objects that hit a labelled object (rows true, columns
    predicted), per category, the objects that hit none or an "other" label, and the plate goals."""
    from xiqa.operators.object_classes import CATEGORY_CLASS
    from xiqa.training.object_classes import goal_shares

    order = ("removable", "device")
    confusion = np.zeros((2, 2), int)
    per_category: dict[str, list[int]] = {}
    unlabelled = dict.fromkeys(order, 0)
    other = dict.fromkeys(order, 0)
    tallies: dict[str, list[int]] = {}
    for result in scored:
        for category, predicted in result.object_classes:
            if category in CATEGORY_CLASS:
                truth = CATEGORY_CLASS[category].value
                confusion[order.index(truth), order.index(predicted)] += 1
                per_category.setdefault(category, [0, 0])
                per_category[category][0] += truth == predicted
                per_category[category][1] += 1
            else:
                (other if category else unlabelled)[predicted] += 1
        for name, (met, plates) in (result.plate_goals or {}).items():
            tallies.setdefault(name, [0, 0])
            tallies[name][0] += met
            tallies[name][1] += plates
    hit = int(confusion.sum())
    return {
        "rows_true_columns_predicted": list(order),
        "confusion": confusion.tolist(),
        "class_accuracy_hit_objects": round(float(np.trace(confusion)) / hit, 4) if hit else None,
        "per_category_correct_of_hit": {c: f"{r}/{n}" for c, (r, n) in sorted(per_category.items())},
        "hit_other_label_predicted": other,
        "hit_no_label_predicted": unlabelled,
        "plate_goals": goal_shares(tallies),
    }


def measure_bundles(
    bundles: dict[str, Path], corpus: Path, images: list, grid: int = GRID, classifier=None
) -> tuple[dict[str, list[PlateResult]], dict[str, float]]:
    """Every bundle on every plate (each plate read and gated once), and each bundle's mean
    seconds per plate for segmentation and scoring (and classes, with ``classifier``)."""
    from xiqa.operators.gate import judge_frontal_chest
    from xiqa.operators.preprocess import PreprocessConfig, to_network_input
    from xiqa.operators.segmentation import load_segmentation_model
    from xiqa.training.datasets import read_raster

    models = {label: load_segmentation_model(bundle, device="cpu") for label, bundle in bundles.items()}
    results: dict[str, list[PlateResult]] = {label: [] for label in bundles}
    seconds = dict.fromkeys(bundles, 0.0)
    for image in images:
        pixels = read_raster(corpus / image.file)
        network_input = to_network_input(pixels)
        segmentation_input = (
            network_input if grid == GRID else to_network_input(pixels, PreprocessConfig(size=grid))
        )
        # the stored plate keeps the source's proportions, which the gate's limb check reads
        tagged = judge_frontal_chest(
            tagged_dataset(image.projection), network_input[0], source_shape=pixels.shape
        )
        untagged = judge_frontal_chest(None, network_input[0], source_shape=pixels.shape)
        for label, model in models.items():
            started = time.perf_counter()
            results[label].append(
                measure_plate(model, image, segmentation_input, tagged, untagged, pixels.shape,
                              classifier, network_input[0])
            )
            seconds[label] += time.perf_counter() - started
    return results, {label: total / max(1, len(images)) for label, total in seconds.items()}


def report_figures(bundle: Path, corpus: Path, chosen: list, output: Path) -> list[str]:
    """report.png of ``chosen`` plates through the whole graph, copied to ``output/figures``."""
    from xiqa.app import build_settings, run_graph
    from xiqa.dicom_fixtures.radiographs import dicom_from_png

    dicoms = output / "dicom"
    dicoms.mkdir(parents=True, exist_ok=True)
    paths = [
        dicom_from_png(
            corpus / image.file,
            dicoms,
            index,
            image.projection if image.projection != "unknown" else "AP",
            index % 2 == 0,
        )
        for index, image in enumerate(chosen)
    ]
    run_graph(build_settings(paths, output / "graph", model=bundle))
    figures = output / "figures"
    figures.mkdir(exist_ok=True)
    copied = []
    for image, path in zip(chosen, paths, strict=True):
        from pydicom import dcmread

        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        report = output / "graph" / uid / "report.png"
        if report.exists():
            target = figures / f"{image.id}.png"
            shutil.copy(report, target)
            copied.append(str(target))
    return copied


def record_held_out(bundle: Path, results: dict, command: str) -> None:
    """Add the folds' figures per source to ``bundle``'s metadata, keeping what the bundle had."""
    path = bundle / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    held_out = metadata["xiqa"]["metrics"].setdefault("held_out_by_source", {})
    for source, figures in results.items():
        if "after" in figures:
            held_out[source] = {
                key: value for key, value in figures["after"].items() if key not in ("refused", "bundle")
            } | {"fold_bundle": Path(figures["after"]["bundle"]).name, "command": command}
    path.write_text(json.dumps(metadata, indent=2))


def _line(label: str, figures: dict) -> str:
    def share(part: int, whole: int) -> str:
        return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "0/0"

    def three_places(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else "n/a"

    false_text = (
        f"{figures['false_objects_per_clean_plate']:.2f}"
        if figures["false_objects_per_clean_plate"] is not None
        else "n/a"
    )
    return (
        f"  {label:<9} gate {share(figures['scored_with_tags'], figures['frontal_plates'])} "
        f"(no tags {share(figures['scored_without_tags'], figures['frontal_plates'])}, "
        f"region estimated {figures['region_estimated']}) | AUC {three_places(figures['auc'])} "
        f"(peak p {three_places(figures['auc_peak_probability'])}) | device plates counted "
        f"{share(figures['device_plates_with_counted_object'], figures['device_plates'])} | clean Good "
        f"{share(figures['clean_good'], figures['clean_plates'])}, false objects {false_text}/plate"
        f" | grid {figures['grid']}, {1000 * figures['segment_and_score_seconds_per_plate']:.0f} ms/plate"
    )


def main(argv: list[str] | None = None) -> int:
    from xiqa.training.corpus import load_corpus

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--fold",
        action="append",
        default=[],
        metavar="SOURCE=BUNDLE",
        help="the bundle trained without SOURCE (held-out figures for SOURCE)",
    )
    parser.add_argument(
        "--classifier-fold",
        action="append",
        default=[],
        metavar="SOURCE=NPZ",
        help="the object classifier trained without SOURCE (python -m xiqa.training.object_classes "
        "--write-folds): class confusion of the counted objects and the plate goals for SOURCE",
    )
    parser.add_argument("--before", type=Path, default=None, help="the previous bundle, for comparison")
    parser.add_argument("--shipped", type=Path, default=None, help="the bundle trained on every source")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=BUNDLE",
        help="another bundle measured beside them on every source, e.g. a fold calibrated otherwise "
        "(held out only where no plate of the source trained or calibrated it)",
    )
    parser.add_argument(
        "--sources", default=None, help="comma-separated sources (default: all in the corpus)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many plates per source")
    parser.add_argument(
        "--grid",
        type=int,
        default=GRID,
        help="segment on this grid (scoring stays on the 256 grid; default: %(default)s)",
    )
    parser.add_argument(
        "--figures", type=int, default=0, help="ICU and clean plates per source for report.png"
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="write each source's held-out figures (its fold's) into BUNDLE's metadata "
        "(xiqa.metrics.held_out_by_source)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    args.output.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.corpus)
    by_id = {image.id: image for image in corpus}
    folds = dict(item.split("=", 1) for item in args.fold)
    classifier_folds = dict(item.split("=", 1) for item in args.classifier_fold)
    sources = args.sources.split(",") if args.sources else sorted({i.source for i in corpus})
    results: dict = {}
    lines = []
    for source in sources:
        plates = [i for i in corpus if i.source == source and i.view == "frontal"][: args.limit]
        bundles = {"before": args.before, "after": folds.get(source), "shipped": args.shipped} | dict(
            item.split("=", 1) for item in args.compare
        )
        results[source] = {}
        with_objects = sum(bool(i.objects_over_chest) for i in plates)
        lines.append(
            f"{source}: {len(plates)} frontal plates, {with_objects} with objects over the chest "
            f"({sum(i.icu for i in plates)} bedside/ICU), {sum(i.clean for i in plates)} clean"
        )
        bundles = {label: Path(bundle) for label, bundle in bundles.items() if bundle is not None}
        logger.info("%s: %s", source, ", ".join(f"{label} {bundle}" for label, bundle in bundles.items()))
        classifier = None
        if source in classifier_folds:
            from xiqa.operators.object_classes import load_classifier

            classifier = load_classifier(Path(classifier_folds[source]))
        measured, seconds = measure_bundles(bundles, args.corpus, plates, args.grid, classifier)
        for label, plate_results in measured.items():
            figures = summarise(plate_results, by_id)
            figures["bundle"] = str(bundles[label])
            figures["grid"] = args.grid
            figures["segment_and_score_seconds_per_plate"] = round(seconds[label], 4)
            results[source][label] = figures
            lines.append(_line(label, figures))
            if "classes" in figures:
                lines.append(f"  {label} classes (held-out classifier {classifier.version}): "
                             + json.dumps(figures["classes"]))
        for label in results[source]:
            if label != "shipped":
                hits = results[source][label]["categories"]
                lines.append(
                    f"  {label} hit rate per category: "
                    + ", ".join(f"{c} {v['hit']}/{v['labelled']}" for c, v in hits.items())
                )
        refused = results[source].get("after", results[source].get("before", {})).get("refused", [])
        lines += [f"  refused: {image_id}: {reason}" for image_id, reason in refused]
        if args.figures and folds.get(source):
            chosen = [i for i in plates if i.icu and i.objects_over_chest][: args.figures]
            chosen += [i for i in plates if i.clean][: args.figures]
            results[source]["figures"] = report_figures(
                Path(folds[source]), args.corpus, chosen, args.output / source
            )
            lines.append(f"  report.png: {', '.join(results[source]['figures'])}")
    (args.output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.record is not None:
        record_held_out(args.record, results, " ".join(sys.argv))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
