"""Train and measure the object classifier (removable / medical device) on the real corpus.

Every labelled object of the corpus' frontal plates (``training/corpus.py``; category "other"
left out: it names no class) is found on its plate by ``extract_real_objects`` (its own pixels
near the label), put on the 256 x 256 analysis grid that xiqa scores on, and described by
``xiqa.operators.object_classes.object_features`` with the chest region the gate would find.

Held-out figures are cross-source (DESIGN.md "Data policy"): trained on one source, measured on
every object of the other.  The shipped classifier is trained on both.

    python -m xiqa.training.object_classes --corpus /work/corpus [--objects CACHE.npz] \
        [--write operators/object_classes.npz] [--write-folds DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..operators.gate import judge_frontal_chest
from ..operators.object_classes import (
    CATEGORY_CLASS,
    FEATURE_NAMES,
    ObjectClass,
    ObjectClassifier,
    object_features,
)
from ..operators.preprocess import resize_image
from .corpus import load_corpus
from .real_objects import extract_real_objects

GRID = 256
CLASSES = (ObjectClass.REMOVABLE.value, ObjectClass.DEVICE.value)


@dataclass(frozen=True)
class ObjectTable:
    """One row per labelled object: its features, class (0 removable, 1 device), category, source."""

    features: np.ndarray  # (N, F)
    classes: np.ndarray  # (N,) int
    categories: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str
    icu: np.ndarray  # (N,) bool, the plate's bedside look


def grid_mask(mask: np.ndarray, top_left: tuple[float, float], plate_shape: tuple[int, int]) -> np.ndarray:
    """The object's crop ``mask`` placed on its plate and brought to the analysis grid.

    A thin lead must not vanish when shrunk, so a grid pixel belongs to the object when a quarter
    of it does."""
    full = np.zeros(plate_shape, np.float32)
    y0, x0 = round(top_left[0] * plate_shape[0]), round(top_left[1] * plate_shape[1])
    full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask[: plate_shape[0] - y0, : plate_shape[1] - x0]
    return resize_image(full, GRID, GRID) >= 0.25


@dataclass(frozen=True)
class CorpusObjects:
    """The labelled objects on the analysis grid, before features: what the slow part finds."""

    plates: np.ndarray  # (P, 256, 256) float16 grid images
    regions: np.ndarray  # (P, 256, 256) bool chest regions (all False when none was found)
    plate_ids: np.ndarray  # (P,) str, the corpus id of each plate
    projections: np.ndarray  # (P,) str, PA / AP / unknown
    masks: np.ndarray  # (N, 256, 256) bool object masks
    plate_index: np.ndarray  # (N,) int, the plate of each object
    categories: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str
    icu: np.ndarray  # (N,) bool, the plate's bedside look

    def save(self, path: Path) -> None:
        np.savez_compressed(path, plates=self.plates, regions=np.packbits(self.regions, axis=-1),
                            plate_ids=self.plate_ids, projections=self.projections,
                            masks=np.packbits(self.masks, axis=-1), plate_index=self.plate_index,
                            categories=self.categories, sources=self.sources, icu=self.icu)

    @classmethod
    def load(cls, path: Path) -> CorpusObjects:
        with np.load(path) as stored:
            return cls(stored["plates"], np.unpackbits(stored["regions"], axis=-1).astype(bool),
                       stored["plate_ids"], stored["projections"],
                       np.unpackbits(stored["masks"], axis=-1).astype(bool), stored["plate_index"],
                       stored["categories"], stored["sources"], stored["icu"])


def corpus_objects(corpus: Path) -> CorpusObjects:
    """Every labelled object with a class on the frontal plates of ``corpus``, on the grid."""
    plates, regions, ids, projections = [], [], [], []
    masks, plate_index, categories, sources, icu = [], [], [], [], []
    for image in load_corpus(corpus):
        if image.view != "frontal" or not image.objects:
            continue
        plate = cv2.imread(str(corpus / image.file), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        grid = np.clip(resize_image(plate, GRID, GRID), 0, 1)
        found = False
        for real in extract_real_objects(image, plate):
            mask = grid_mask(real.mask, real.top_left, plate.shape)
            if real.category not in CATEGORY_CLASS or not mask.any():
                continue
            if not found:
                plates.append(grid.astype(np.float16))
                regions.append(judge_frontal_chest(None, grid).region.mask)
                ids.append(image.id)
                projections.append(image.projection)
                found = True
            masks.append(mask)
            plate_index.append(len(plates) - 1)
            categories.append(real.category)
            sources.append(image.source)
            icu.append(image.icu)
    return CorpusObjects(np.stack(plates), np.stack(regions), np.array(ids), np.array(projections),
                         np.stack(masks), np.array(plate_index),
                         np.array(categories), np.array(sources), np.array(icu))


def object_table(objects: CorpusObjects) -> ObjectTable:
    rows = []
    for mask, index in zip(objects.masks, objects.plate_index, strict=True):
        region = objects.regions[index]
        rows.append(object_features(objects.plates[index].astype(np.float32), mask,
                                    region if region.any() else None))
    classes = np.array([int(CATEGORY_CLASS[c] == ObjectClass.DEVICE) for c in objects.categories])
    return ObjectTable(np.stack(rows), classes, objects.categories, objects.sources, objects.icu)


def train_classifier(table: ObjectTable, hidden: int = 32, epochs: int = 400, seed: int = 0,
                     weight_decay: float = 1e-3) -> ObjectClassifier:
    """A two-head perceptron on ``table``; classes and categories weighted to balance them."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a 1000 x 31 table: threads only add overhead
    categories = tuple(c for c in CATEGORY_CLASS if c in set(table.categories))
    category_index = np.array([categories.index(c) for c in table.categories])
    mean = table.features.mean(axis=0)
    scale = table.features.std(axis=0) + 1e-3
    x = torch.tensor((table.features - mean) / scale, dtype=torch.float32)
    y_class = torch.tensor(table.classes)
    y_category = torch.tensor(category_index)
    class_weight = torch.tensor(len(table.classes) / (2 * np.bincount(table.classes, minlength=2).clip(1)),
                                dtype=torch.float32)
    counts = np.bincount(category_index, minlength=len(categories)).clip(1)
    category_weight = torch.tensor((len(category_index) / (len(categories) * counts)) ** 0.5,
                                   dtype=torch.float32)
    body = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU())
    class_head = torch.nn.Linear(hidden, 2)
    category_head = torch.nn.Linear(hidden, len(categories))
    parameters = [*body.parameters(), *class_head.parameters(), *category_head.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=0.01, weight_decay=weight_decay)
    for _ in range(epochs):
        optimiser.zero_grad()
        noisy = x + 0.05 * torch.randn_like(x)
        hidden_out = torch.nn.functional.dropout(body(noisy), 0.2)
        cross_entropy = torch.nn.functional.cross_entropy
        loss = cross_entropy(class_head(hidden_out), y_class, weight=class_weight) + \
            0.5 * cross_entropy(category_head(hidden_out), y_category, weight=category_weight)
        loss.backward()
        optimiser.step()

    def numpy(tensor) -> np.ndarray:
        return tensor.detach().numpy().astype(np.float32)

    return ObjectClassifier(
        mean.astype(np.float32), scale.astype(np.float32), numpy(body[0].weight.T), numpy(body[0].bias),
        numpy(class_head.weight.T), numpy(class_head.bias), numpy(category_head.weight.T),
        numpy(category_head.bias), categories,
        version=f"mlp{hidden}-{'+'.join(sorted(set(table.sources)))}-{len(table.classes)}obj")


def subset(table: ObjectTable, keep: np.ndarray) -> ObjectTable:
    return ObjectTable(table.features[keep], table.classes[keep], table.categories[keep], table.sources[keep],
                       table.icu[keep])


def evaluate(classifier: ObjectClassifier, table: ObjectTable) -> dict:
    """Class accuracy, the class confusion table (rows true, columns predicted) and per category."""
    predictions = classifier.predict(table.features)
    predicted = np.array([int(p.object_class == ObjectClass.DEVICE) for p in predictions])
    confusion = np.zeros((2, 2), int)
    np.add.at(confusion, (table.classes, predicted), 1)
    per_category = {}
    for category in sorted(set(table.categories)):
        rows = table.categories == category
        correct = predicted[rows] == table.classes[rows]
        per_category[category] = {"objects": int(rows.sum()),
                                  "class_accuracy": round(float(correct.mean()), 3)}
    named = np.array([p.category for p in predictions])
    return {
        "objects": len(predicted),
        "class_accuracy": round(float((predicted == table.classes).mean()), 4),
        "confusion": {"rows_true_columns_predicted": list(CLASSES), "table": confusion.tolist()},
        "category_accuracy": round(float((named == table.categories).mean()), 4),
        "per_category": per_category,
    }


def cross_source(table: ObjectTable, **train_options) -> tuple[dict, dict[str, ObjectClassifier]]:
    """Train on each source alone, measure on the other; (figures, classifier by held-out source)."""
    results, classifiers = {}, {}
    for held_out in sorted(set(table.sources)):
        train = subset(table, table.sources != held_out)
        test = subset(table, table.sources == held_out)
        classifiers[held_out] = train_classifier(train, **train_options)
        results[f"train {'+'.join(sorted(set(train.sources)))} -> test {held_out}"] = \
            evaluate(classifiers[held_out], test)
    return results, classifiers


#: the issue's plate-level goals (and what each counts): see :func:`tally_plate_goals`
PLATE_GOALS = ("device_only_ap_good_or_acceptable", "device_only_ap_listing_a_device",
               "device_or_ecg_ap_good_or_acceptable", "device_plates_listing_a_device",
               "removable_plates_poor_or_acceptable")


def tally_plate_goals(tallies: dict[str, list[int]], categories: list[str], projection: str,
                      over_chest: list[bool], classified) -> None:
    """Add one plate to ``tallies`` (goal -> [met, plates]) of :data:`PLATE_GOALS`.

    ``categories`` are the plate's labelled objects (``over_chest``: which lie over the chest),
    ``classified`` the plate's classed :class:`~xiqa.operators.scoring.QualityResult`.  Device
    plates: AP with every labelled object a device (or a device or an ECG electrode/lead, which
    the ECG rule expects on an AP plate): the default verdict Good or Acceptable, and at least one
    counted object classed a device; removable plates: a removable object that counts (not an ECG
    lead on an AP plate) over the chest: the default verdict Poor or Acceptable.
    """
    from ..operators.object_classes import ECG_CATEGORIES
    from ..operators.scoring import Verdict

    def add(name: str, met: bool) -> None:
        tallies.setdefault(name, [0, 0])
        tallies[name][0] += bool(met)
        tallies[name][1] += 1

    is_device = [CATEGORY_CLASS[c] == ObjectClass.DEVICE for c in categories]
    good = classified.default_verdict in (Verdict.GOOD, Verdict.ACCEPTABLE)
    if projection == "AP" and is_device and all(is_device):
        add("device_only_ap_good_or_acceptable", good)
        add("device_only_ap_listing_a_device", bool(classified.devices))
    if projection == "AP" and any(is_device) and all(d or c in ECG_CATEGORIES
                                                     for d, c in zip(is_device, categories, strict=True)):
        add("device_or_ecg_ap_good_or_acceptable", good)
    if any(is_device):
        add("device_plates_listing_a_device", bool(classified.devices))
    counting = [not d and not (projection == "AP" and c in ECG_CATEGORIES)
                for d, c in zip(is_device, categories, strict=True)]
    if any(c and o for c, o in zip(counting, over_chest, strict=True)):
        add("removable_plates_poor_or_acceptable",
            classified.default_verdict in (Verdict.POOR, Verdict.ACCEPTABLE))


def goal_shares(tallies: dict[str, list[int]]) -> dict[str, str]:
    return {name: f"{tallies[name][0]}/{tallies[name][1]} ({100 * tallies[name][0] / tallies[name][1]:.0f} %)"
            if tallies.get(name, [0, 0])[1] else "0/0" for name in PLATE_GOALS}


def plate_goals(objects: CorpusObjects, classifiers: dict[str, ObjectClassifier]) -> dict:
    """The issue's plate-level goals with the labelled objects as the mask (every object hit).

    Each plate's labelled objects (their own pixels) are scored together as the segmentation
    would find them, classed by the classifier that never saw the plate's source, with the ECG
    rule by the plate's projection (:func:`tally_plate_goals`; over the chest: at least 20 % of
    the object's pixels over the chest region the gate finds).
    """
    from ..operators.object_classes import classify_quality
    from ..operators.scoring import score_mask

    tallies: dict[str, list[int]] = {}
    seconds: list[float] = []  # classify_quality per plate (features of every object and the network)
    for index in range(len(objects.plates)):
        rows = np.flatnonzero(objects.plate_index == index)
        source = str(objects.sources[rows[0]])
        projection = str(objects.projections[index])
        region = objects.regions[index] if objects.regions[index].any() else None
        image = objects.plates[index].astype(np.float32)
        union = np.any(objects.masks[rows], axis=0).astype(np.uint8)
        quality = score_mask(union, None, region=region)
        if not quality.objects:
            continue
        started = time.process_time()  # CPU time: the machine is shared, wall time says little
        classified = classify_quality(quality, image, region, classifiers[source],
                                      view_position=projection if projection in ("AP", "PA") else "")
        seconds.append(time.process_time() - started)
        over_chest = [region is None or bool(region[objects.masks[row]].mean() >= 0.2) for row in rows]
        tally_plate_goals(tallies, [str(c) for c in objects.categories[rows]], projection, over_chest,
                          classified)
    goals: dict = goal_shares(tallies)
    goals["classifier_cpu_ms_per_plate_mean_p95_max"] = [round(1000 * float(v), 2) for v in (
        np.mean(seconds), np.percentile(seconds, 95), np.max(seconds))]
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xiqa.training.object_classes")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--objects", type=Path, help="cache of the objects on the grid (npz)")
    parser.add_argument("--write", type=Path, help="train on every source and write the classifier here")
    parser.add_argument("--write-folds", type=Path, metavar="DIR",
                        help="write each held-out fold's classifier as DIR/without_<source>.npz "
                             "(benchmarks/real_radiographs.py --classifier-fold)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.objects and args.objects.exists():
        objects = CorpusObjects.load(args.objects)
    else:
        objects = corpus_objects(args.corpus)
        if args.objects:
            objects.save(args.objects)
    table = object_table(objects)
    seconds = time.perf_counter() - started
    print(f"{len(table.classes)} objects, {len(FEATURE_NAMES)} features, {seconds:.0f} s")
    results, classifiers = cross_source(table)
    print(json.dumps(results, indent=1))
    if args.write_folds:
        args.write_folds.mkdir(parents=True, exist_ok=True)
        for held_out, classifier in classifiers.items():
            path = classifier.save(args.write_folds / f"without_{held_out}.npz")
            print(f"wrote {path} ({classifier.version})")
    goals = plate_goals(objects, classifiers)
    print(json.dumps({"plate goals, labelled objects as the mask, held-out source": goals}, indent=1))
    if args.write:
        classifier = train_classifier(table)
        print(f"wrote {classifier.save(args.write)} ({classifier.version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
