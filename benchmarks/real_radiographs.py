"""How a segmentation bundle fares on real chest radiographs it never saw (issue "Real radiographs").

    python benchmarks/real_radiographs.py --output /tmp/real [--before OLD_BUNDLE] [--model BUNDLE]
           [--extra FOLDER]

Every figure comes from images outside training and validation (``data/real_cxr``, split by
patient):

1. held-out composites: the held-out clean backgrounds with synthetic objects inserted
   (``training.composite``), scored at the network level: pooled Dice and recall, object-level
   sensitivity and false objects per image (objects merged as scoring merges them);
2. held-out clean plates through the whole graph (written as DX/CR DICOM, MONOCHROME1 and 2):
   false objects per image (counted over the chest) and the share rated Good;
3. held-out device plates through the whole graph: per marked device (``devices.json``) hit
   (a predicted pixel on it) and counted (an object over the chest that touches it);
4. fragment merging: the object-count error on validation composites for several radii;
5. with ``--extra``, the input gate on other radiographs (a folder with ``manifest.json``,
   ``images/*.png`` and a ``kind`` per image).

Each model ``--before`` and ``--model`` is measured in the same run; report.png of two clean
and two device plates are copied to ``--output/figures``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = ROOT / "data" / "real_cxr"
HELD_OUT_SEED, VALIDATION_SEED = 3, 2
MERGE_RADII = (0, 1, 2, 3, 4, 6)
GRID = 256
logger = logging.getLogger("real_radiographs")


def run_graph_on(paths: list[Path], output: Path, bundle: Path):
    from xiqa.app import build_settings, run_graph

    return run_graph(build_settings(paths, output, model=bundle))


def _masks(model, probabilities: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) boolean masks as the graph's segmentation node makes them (with hysteresis)."""
    from xiqa.operators.segmentation import hysteresis_masks

    return hysteresis_masks(probabilities, model.threshold, model.seed_threshold, model.sure_area)


def composite_figures(bundle: Path, backgrounds: list, seed: int, per_background: int) -> dict:
    from xiqa.operators.segmentation import load_segmentation_model
    from xiqa.training.composite import composite_samples
    from xiqa.training.metrics import object_level_metrics, pooled_dice_recall
    from xiqa.training.trainer import predict_probabilities

    model = load_segmentation_model(bundle, device="cpu")
    samples = composite_samples(backgrounds, seed, per_background)
    probabilities, labels = predict_probabilities(model.networks[0], samples)
    predicted = _masks(model, probabilities)
    return {
        "images": len(samples),
        **pooled_dice_recall(predicted, labels),
        **object_level_metrics(predicted, labels),
    }


def merge_sweep(bundle: Path, backgrounds: list, per_background: int) -> dict:
    """Mean absolute error of the object count against the inserted objects, per merge radius."""
    from xiqa.operators.scoring import find_objects
    from xiqa.operators.segmentation import load_segmentation_model
    from xiqa.training.composite import composite_samples
    from xiqa.training.trainer import predict_probabilities

    model = load_segmentation_model(bundle, device="cpu")
    samples = composite_samples(backgrounds, VALIDATION_SEED, per_background)
    probabilities, _ = predict_probabilities(model.networks[0], samples)
    masks = _masks(model, probabilities)
    errors = {}
    for radius in MERGE_RADII:
        errors[radius] = float(
            np.mean(
                [
                    abs(len(find_objects(mask[0], radius)) - len(s["kinds"]))
                    for mask, s in zip(masks, samples, strict=True)
                ]
            )
        )
    return errors


def _polygon_mask(points: list, png_shape: tuple[int, int]) -> np.ndarray:
    from xiqa.operators.preprocess import resize_mask

    mask = np.zeros(png_shape, np.uint8)
    cv2.fillPoly(mask, [np.array(points, np.int32)], 1)
    grid = resize_mask(mask, GRID, GRID)
    if not grid.any():  # a thin polygon: keep at least the pixels it touches
        grid = cv2.resize(mask, (GRID, GRID), interpolation=cv2.INTER_NEAREST)
    return grid > 0


def device_rows(cases, entries: dict, annotations: dict) -> list[dict]:
    from xiqa.operators.scoring import ScoringConfig, find_objects

    min_inside = ScoringConfig().min_inside_fraction
    rows = []
    for case in cases:
        image_id = case.path.stem
        png_shape = cv2.imread(str(REAL_CXR / entries[image_id]["file"]), cv2.IMREAD_GRAYSCALE).shape
        for device in annotations[image_id]:
            region = _polygon_mask(device["polygon"], png_shape)
            row = {
                "image": image_id,
                "device": device["device"],
                "inside_chest": device["inside_chest"],
                "marker": device.get("marker", False),
                "gate": case.frontal_chest,
            }
            if case.frontal_chest and case.ok:
                mask = case.segmentation.mask > 0
                row["hit"] = bool((mask & region).any())
                # counted as scoring counts: enough of the object over the chest region
                chest = case.gate.region.mask
                row["counted"] = any(
                    (component & region).any() and chest[component].mean() >= min_inside
                    for component, _ in find_objects(mask, case.quality.merge_radius)
                )
            rows.append(row)
    return rows


def clean_rows(cases) -> list[dict]:
    rows = []
    for case in cases:
        row = {"image": case.path.stem, "gate": case.frontal_chest, "ok": case.ok}
        if case.ok and case.frontal_chest:
            row.update(
                objects=len(case.quality.objects),
                outside=len(case.quality.objects_outside),
                raw=case.quality.raw_component_count,
                q_img=round(case.quality.q_img, 3),
                verdict=case.quality.verdict.value,
            )
        rows.append(row)
    return rows


def gate_rows(extra: Path) -> list[dict]:
    from xiqa.operators.gate import judge_frontal_chest
    from xiqa.operators.preprocess import resize_image
    from xiqa.training.datasets import read_raster

    rows = []
    for entry in json.loads((extra / "manifest.json").read_text()):
        pixels = read_raster(extra / "images" / Path(entry["file"]).name)
        decision = judge_frontal_chest(None, np.clip(resize_image(pixels, GRID, GRID), 0, 1))
        expected = entry["kind"].startswith("frontal_chest")
        rows.append(
            {
                "image": Path(entry["file"]).stem[:60],
                "kind": entry["kind"],
                "passed": decision.frontal_chest,
                "correct": decision.frontal_chest == expected,
                "reason": decision.reason,
            }
        )
    return rows


def measure(
    bundle: Path, label: str, output: Path, manifest: list[dict], annotations: dict, per_background: int
) -> dict:
    from xiqa.dicom_fixtures.radiographs import dicom_from_png
    from xiqa.training.datasets import read_raster

    entries = {entry["id"]: entry for entry in manifest}
    held_out = [read_raster(REAL_CXR / e["file"]) for e in manifest if e["split"] == "held_out_clean"]
    validation = [read_raster(REAL_CXR / e["file"]) for e in manifest if e["split"] == "validation"]
    dicoms = output / "dicom"
    dicoms.mkdir(parents=True, exist_ok=True)
    clean_paths, device_paths = [], []
    for index, entry in enumerate(manifest):
        if entry["split"] in ("held_out_clean", "held_out_devices"):
            path = dicom_from_png(
                REAL_CXR / entry["file"], dicoms, index, entry["projection"], index % 2 == 0
            )
            (clean_paths if entry["split"] == "held_out_clean" else device_paths).append(path)
    logger.info("%s: composites", label)
    figures = {
        "composites": composite_figures(bundle, held_out, HELD_OUT_SEED, per_background),
        "merge_count_error": merge_sweep(bundle, validation, 24),
    }
    logger.info("%s: clean plates through the graph", label)
    clean = clean_rows(run_graph_on(clean_paths, output / label / "clean", bundle))
    scored = [row for row in clean if "objects" in row]
    figures["clean"] = {
        "images": len(clean),
        "gate_passed": len(scored),
        "false_objects_per_image": float(np.mean([r["objects"] for r in scored])) if scored else None,
        "good_share": float(np.mean([r["verdict"] == "Good" for r in scored])) if scored else None,
        # what the thesis' counting (raw components over the whole image) finds on the same masks
        "raw_components_per_image": float(np.mean([r["raw"] for r in scored])) if scored else None,
        "rows": clean,
    }
    logger.info("%s: device plates through the graph", label)
    device_cases = run_graph_on(device_paths, output / label / "devices", bundle)
    figures["devices"] = device_rows(
        [c for c in device_cases if annotations.get(c.path.stem)], entries, annotations
    )
    figures["device_plates"] = clean_rows(device_cases)
    return figures


def _table(figures: dict, label: str) -> list[str]:
    composites, clean = figures["composites"], figures["clean"]
    devices = [row for row in figures["devices"] if not row["marker"]]
    hits = sum(row.get("hit", False) for row in devices)
    counted = sum(row.get("counted", False) for row in devices if row["inside_chest"])
    inside = sum(row["inside_chest"] for row in devices)
    return [
        f"{label}: held-out composites ({composites['images']} images): Dice {composites['dice']:.3f} "
        f"recall {composites['recall']:.3f} object sensitivity {composites['object_sensitivity']:.3f} "
        f"false objects/image {composites['false_objects_per_image']:.2f}",
        f"{label}: held-out clean plates: {clean['gate_passed']}/{clean['images']} passed the gate, "
        f"false objects/image {clean['false_objects_per_image']:.2f} (raw components over the whole "
        f"image {clean['raw_components_per_image']:.2f}), Good {clean['good_share']:.2f}",
        f"{label}: devices: {hits}/{len(devices)} hit, {counted}/{inside} of those over the chest counted",
        f"{label}: merge radius -> mean |count error| on validation composites: "
        + ", ".join(f"{radius}: {error:.2f}" for radius, error in figures["merge_count_error"].items()),
    ]


def main(argv: list[str] | None = None) -> int:
    from xiqa.operators.segmentation import DEFAULT_BUNDLE

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="default: %(default)s")
    parser.add_argument(
        "--before", type=Path, default=None, help="a bundle to compare with (e.g. the old one)"
    )
    parser.add_argument("--extra", type=Path, default=None, help="other radiographs for the gate")
    parser.add_argument("--per-background", type=int, default=8, help="held-out composites per background")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    manifest = json.loads((REAL_CXR / "manifest.json").read_text())["images"]
    annotations = json.loads((REAL_CXR / "devices.json").read_text())["images"]
    args.output.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, bundle in (("before", args.before), ("after", args.model)):
        if bundle is not None:
            results[label] = measure(bundle, label, args.output, manifest, annotations, args.per_background)
    if args.extra is not None:
        results["gate"] = gate_rows(args.extra)
    (args.output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    figures_folder = args.output / "figures"
    figures_folder.mkdir(exist_ok=True)
    for kind in ("clean", "devices"):
        for report in sorted((args.output / "after" / kind).glob("*/report.png"))[:4]:
            shutil.copy(report, figures_folder / f"{kind}_{report.parent.name[-12:]}.png")
    lines = [line for label, figures in results.items() if label != "gate" for line in _table(figures, label)]
    if "gate" in results:
        rows = results["gate"]
        lines.append(f"gate on --extra: {sum(r['correct'] for r in rows)}/{len(rows)} correct")
        lines += [f"  {r['kind']:<28} passed={r['passed']!s:<5} {r['image']}: {r['reason']}" for r in rows]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
