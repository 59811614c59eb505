"""Train and measure the lung-field network of the acquisition checks (``xiqa.operators.lung_fields``).

Masks: the lung outlines of v7labs/covid-19-xray-dataset (CC BY 4.0, drawn by annotators and
reviewed), on the Hannover plates they cover (CC BY 3.0); the covid-only Darwin export maps each
mask to the plate's file name.  Plates with by-eye acquisition labels
(``data/acquisition_labels``) are left out of training, so the checks' agreement with those
labels stays a held-out figure.

Held-out figures: Dice by patient-grouped folds on Hannover (the same hospital: a fit, not
generalisation), and Dice on another source that gave nothing (``--eye-masks``: polygons drawn
by eye on NIH plates, ``data/lung_fields``).  The shipped network is then trained on all masks.

    python -m xiqa.training.lung_fields --corpus /work/corpus \
        --v7 /work/.mirror/v7labs+covid-19-xray-dataset/repo [--folds 5] \
        [--eye-masks data/lung_fields/nih_lungs.jsonl] [--write operators/lung_fields.pt]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..operators.lung_fields import LungFieldModel, lung_network, standardised
from ..operators.preprocess import to_network_input

GRID = 256
REPO = Path(__file__).resolve().parents[1]
V7_REPOSITORY = "https://github.com/v7labs/covid-19-xray-dataset"


def v7_masks(git_dir: Path) -> dict[str, str]:
    """Hannover plate id (8 hex digits) -> v7labs mask id, from the covid-only Darwin export."""
    blob = subprocess.run(["git", "--git-dir", str(git_dir), "show", "HEAD:annotations/covid-only.zip"],
                          capture_output=True, check=True).stdout
    mapping = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for name in archive.namelist():
            if not name.endswith(".json"):
                continue
            record = json.loads(archive.read(name))
            original = record["image"]["original_filename"]
            has_lung = any(annotation.get("name") == "Lung" for annotation in record.get("annotations", []))
            if re.fullmatch(r"[0-9a-f]{8}\.(jpg|png)", original) and has_lung:
                mapping[original[:8]] = Path(name).stem
    return mapping


def v7_mask(git_dir: Path, mask_id: str, size: int = GRID) -> np.ndarray:
    """The v7labs lung mask ``mask_id`` (both lungs, bool) on a ``size`` x ``size`` grid."""
    raw = subprocess.run(["git", "--git-dir", str(git_dir), "show",
                          f"HEAD:annotations/all-images-semantic-masks/{mask_id}.png"],
                         capture_output=True, check=True).stdout
    mask = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE) == 255
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def polygon_mask(record: dict, size: int = GRID) -> np.ndarray:
    """Both lung polygons of one by-eye record (``data/lung_fields``) filled on a ``size`` grid."""
    mask = np.zeros((size, size), np.uint8)
    scale = np.array([size / record["width"], size / record["height"]])
    for key in ("image_left_lung", "image_right_lung"):
        points = np.round(np.asarray(record[key], np.float64) * scale).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask > 0


def grid_image(path: Path) -> np.ndarray:
    """The plate as the graph analyses it: the 256 x 256 display-domain grid."""
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    return to_network_input(pixels)[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * float((a & b).sum()) / float(total)


@dataclass(frozen=True)
class MaskedPlate:
    plate_id: str
    patient: str
    grid: np.ndarray  # (256, 256) float32
    mask: np.ndarray  # (256, 256) bool, both lungs


def v7_plates(corpus: Path, git_dir: Path, exclude: set[str]) -> list[MaskedPlate]:
    """Every Hannover plate of the corpus (or of data/real_cxr) with a v7labs lung mask."""
    patients = {}
    manifest = corpus / "manifest.json"
    if manifest.exists():
        for entry in json.loads(manifest.read_text()).get("images", []):
            patients[entry["id"]] = str(entry.get("group", entry["id"]))
    files = {path.stem.split("_", 1)[1]: path for folder in (corpus, REPO / "data" / "real_cxr")
             for path in folder.glob("hannover_*.png")}
    plates = []
    for plate, mask_id in sorted(v7_masks(git_dir).items()):
        identifier = f"hannover_{plate}"
        if plate not in files or identifier in exclude:
            continue
        plates.append(MaskedPlate(identifier, patients.get(identifier, identifier), grid_image(files[plate]),
                                  v7_mask(git_dir, mask_id)))
    return plates


def augmented(rng: np.random.Generator, grid: np.ndarray, mask: np.ndarray,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """One training view: moved, turned, scaled and cut as plates come (black wedges of a tilted
    plate, a lung cut off by the film's edge, a collimator shutter), in other grey levels."""
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.8, 1.25)
    shift = rng.uniform(-0.12, 0.12, size=2) * GRID
    matrix = cv2.getRotationMatrix2D((GRID / 2, GRID / 2), angle, scale)
    matrix[:, 2] += shift
    fill = float(rng.choice([0.0, 0.0, 1.0, rng.uniform(0, 1)]))
    image = cv2.warpAffine(grid, matrix, (GRID, GRID), flags=cv2.INTER_LINEAR, borderValue=fill)
    label = cv2.warpAffine(mask.astype(np.float32), matrix, (GRID, GRID), flags=cv2.INTER_LINEAR) > 0.5
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if rng.random() < 0.3:  # a shutter: a flat band over one edge, the lung under it unseen
        side, depth = int(rng.integers(4)), int(rng.integers(8, 48))
        band = [slice(None), slice(None)]
        band[side % 2] = slice(0, depth) if side < 2 else slice(GRID - depth, GRID)
        image = image.copy()
        image[tuple(band)] = rng.uniform(0.7, 1.0)
        label = label.copy()
        label[tuple(band)] = False
    image = np.clip(image, 0, 1) ** rng.uniform(0.6, 1.6)
    image = image * rng.uniform(0.7, 1.2) + rng.uniform(-0.1, 0.1) + rng.normal(0, 0.02, image.shape)
    image = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    label = cv2.resize(label.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
    return standardised(image), label


def no_chest(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A view with no lung at all: a flat field, a smooth ramp or soft blobs, with noise.  Without
    such views the network draws its average lungs on anything (a blank or flat image)."""
    kind = int(rng.integers(3))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        image = np.full((size, size), rng.uniform(0, 1), np.float32)
    elif kind == 1:
        image = rng.uniform(0, 1) * rows + rng.uniform(-1, 1) * cols
    else:
        image = cv2.GaussianBlur(rng.uniform(0, 1, (size, size)).astype(np.float32), (0, 0), size / 12)
    image = image + rng.normal(0, rng.uniform(0.001, 0.05), image.shape)
    return standardised(image.astype(np.float32)), np.zeros((size, size), bool)


def train(plates: list[MaskedPlate], *, size: int = 128, channels: tuple[int, ...] = (8, 16, 32, 64, 128),
          epochs: int = 60, batch: int = 16, learning_rate: float = 2e-3, seed: int = 0,
          no_chest_share: float = 0.1, log=print) -> LungFieldModel:
    """A lung-field network trained on ``plates`` (binary cross-entropy plus soft Dice), with
    ``no_chest_share`` of each batch views of no chest (:func:`no_chest`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = lung_network(channels)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    steps_per_epoch = max(1, len(plates) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate,
                                                   total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        network.train()
        order = rng.permutation(len(plates))
        losses = []
        for step in range(steps_per_epoch):
            views = [no_chest(rng, size) if rng.random() < no_chest_share
                     else augmented(rng, plates[i].grid, plates[i].mask, size)
                     for i in order[step * batch:(step + 1) * batch]]
            images = torch.from_numpy(np.stack([view[0] for view in views]))[:, None]
            labels = torch.from_numpy(np.stack([view[1] for view in views]).astype(np.float32))[:, None]
            logits = network(images)
            probability = torch.sigmoid(logits)
            overlap = (probability * labels).sum(dim=(1, 2, 3))
            total = probability.sum(dim=(1, 2, 3)) + labels.sum(dim=(1, 2, 3))
            soft_dice = 1 - (2 * overlap + 1) / (total + 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + soft_dice.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        if epoch % 10 == 9 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}")
    network.eval()
    return LungFieldModel(network, size, tuple(channels))


def dices(model: LungFieldModel, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.array([dice(model.lung_labels(grid) > 0, mask) for grid, mask in pairs])


def _summary(values: np.ndarray) -> str:
    return (f"mean {values.mean():.3f}, median {np.median(values):.3f}, "
            f"10th percentile {np.percentile(values, 10):.3f}, n {values.size}")


def patient_folds(plates: list[MaskedPlate], folds: int, seed: int) -> list[list[int]]:
    patients = sorted({plate.patient for plate in plates})
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[index]: rank % folds for rank, index in enumerate(order)}
    return [[i for i, plate in enumerate(plates) if fold_of[plate.patient] == fold] for fold in range(folds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    parser.add_argument("--v7", type=Path, default=Path("/work/.mirror/v7labs+covid-19-xray-dataset/repo"))
    parser.add_argument("--labels", type=Path, default=REPO / "data" / "acquisition_labels" / "labels.jsonl",
                        help="plates labelled for the acquisition checks: left out of training")
    parser.add_argument("--eye-masks", type=Path, action="append", default=[],
                        help="JSONL of by-eye lung polygons on plates of a held-out source")
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped folds on the masks (0: none)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=300, help="300 made the shipped model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="train on every mask and write the model here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    labelled = {json.loads(line)["id"] for line in args.labels.read_text().splitlines() if line.strip()}
    plates = v7_plates(args.corpus, args.v7, exclude=labelled)
    print(f"v7labs lung masks on Hannover plates: {len(plates)} (acquisition-labelled plates left out)")
    eye = []
    for path in args.eye_masks:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                grid = grid_image(args.corpus / f"{record['id']}.png")
                eye.append((record["id"], grid, polygon_mask(record)))
    figures: dict[str, object] = {}
    if args.folds:
        held_out = []
        for fold, indices in enumerate(patient_folds(plates, args.folds, args.seed)):
            chosen = set(indices)
            model = train([p for i, p in enumerate(plates) if i not in chosen], size=args.size,
                          epochs=args.epochs, seed=args.seed, log=lambda *_: None)
            values = dices(model, [(plates[i].grid, plates[i].mask) for i in indices])
            held_out.extend(values)
            print(f"fold {fold + 1}/{args.folds}: Dice {_summary(values)}")
        figures["hannover_patient_folds_dice"] = round(float(np.mean(held_out)), 4)
        print(f"Hannover, patient-grouped folds (same hospital): Dice {_summary(np.array(held_out))}")
    started = time.perf_counter()
    model = train(plates, size=args.size, epochs=args.epochs, seed=args.seed)
    print(f"trained on all {len(plates)} masks in {time.perf_counter() - started:.0f} s")
    if eye:
        values = dices(model, [(grid, mask) for _, grid, mask in eye])
        figures["held_out_eye_dice"] = round(float(values.mean()), 4)
        print(f"held-out source, by-eye masks: Dice {_summary(values)}")
        for (identifier, _, _), value in zip(eye, values, strict=True):
            print(f"  {identifier}: {value:.3f}")
    grid = plates[0].grid
    started = time.perf_counter()
    for _ in range(20):
        model.lung_labels(grid)
    spent = 1000 * (time.perf_counter() - started) / 20
    print(f"lung fields per plate: {spent:.1f} ms ({args.threads} threads)")
    if args.write:
        model.lineage = {
            "masks": f"{V7_REPOSITORY} (CC BY 4.0), covid-only export, {len(plates)} plates",
            "plates": "Hannover COVID-19 image repository (CC BY 3.0)",
            "left_out": f"{len(labelled)} acquisition-labelled plates", "input_size": args.size,
            "epochs": args.epochs, "seed": args.seed, "figures": figures,
        }
        print(f"wrote {model.save(args.write)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
