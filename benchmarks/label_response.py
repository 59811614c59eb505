"""How strongly a bundle's network answers on each labelled real object, by category.

    python benchmarks/label_response.py --corpus /work/corpus --bundle BUNDLE --sources hannover \\
        [--categories endotracheal_tube,nasogastric_tube]

Before changing how an object kind is drawn or counted, this tells which of three things loses it:
the chest region (the share of the object's label band that lies over the chest, where scoring
counts), the network (the peak object probability inside the band, median over the category's
labelled objects) or the hysteresis (the share of objects whose peak over the chest reaches the
bundle's threshold and its seed).  Each plate goes through the graph's own gate (with the tags a
modality sets) and segmentation, as ``real_radiographs.py`` runs them.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_radiographs import label_grid_band, tagged_dataset  # noqa: E402


def object_responses(bundle: Path, corpus: Path, sources: set[str], categories: set[str] | None) -> dict:
    """Per category, one (share of band over the chest, peak in band, peak in band over the chest)
    row per labelled object on a plate the gate scores; and the bundle's thresholds."""
    from xiqa.operators.gate import judge_frontal_chest
    from xiqa.operators.preprocess import to_network_input
    from xiqa.operators.segmentation import load_segmentation_model, segment
    from xiqa.training.corpus import load_corpus
    from xiqa.training.datasets import read_raster

    model = load_segmentation_model(bundle, device="cpu")
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for image in load_corpus(corpus):
        wanted = [obj for obj in image.objects if categories is None or obj.category in categories]
        if image.source not in sources or not wanted:
            continue
        pixels = read_raster(corpus / image.file)
        network_input = to_network_input(pixels)
        decision = judge_frontal_chest(tagged_dataset(image.projection), network_input[0],
                                       source_shape=pixels.shape)
        if not decision.frontal_chest:
            continue
        probability = segment(model, network_input).probability
        region = decision.region.mask > 0
        for obj in wanted:
            band = label_grid_band(obj, pixels.shape)
            over_chest = band & region
            rows[obj.category].append((
                float(over_chest.sum() / max(1, band.sum())),
                float(probability[band].max()) if band.any() else 0.0,
                float(probability[over_chest].max()) if over_chest.any() else 0.0,
            ))
    return {"rows": dict(rows), "threshold": model.threshold, "seed_threshold": model.seed_threshold}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--sources", required=True, help="comma-separated corpus sources")
    parser.add_argument("--categories", default=None, help="comma-separated label categories (default: all)")
    args = parser.parse_args(argv)
    categories = None if args.categories is None else set(args.categories.split(","))
    responses = object_responses(args.bundle, args.corpus, set(args.sources.split(",")), categories)
    threshold, seed = responses["threshold"], responses["seed_threshold"]
    print(f"{args.bundle}: threshold {threshold}, seed {seed}")
    for category, rows in sorted(responses["rows"].items()):
        table = np.array(rows)
        seeded = np.mean(table[:, 2] >= (seed if seed is not None else threshold))
        print(f"  {category:22s} n={len(table):4d} | band over the chest {table[:, 0].mean():.2f}"
              f" | median peak in band {np.median(table[:, 1]):.3f}"
              f" | peak over the chest >= threshold {np.mean(table[:, 2] >= threshold):.2f},"
              f" >= seed {seeded:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
